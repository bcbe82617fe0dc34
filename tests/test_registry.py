"""The shared registry: lookup with did-you-mean, options from signatures, plug-in modules."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from wersa.registry import Registry


class Alpha:
    name = "alpha"

    def __init__(self, size: int, *, depth: int = 2, width=None):
        pass


def make() -> Registry:
    reg = Registry("widget", name_of=lambda cls: cls.name)
    reg.register(Alpha)
    return reg


def test_lookup_options_and_errors():
    reg = make()
    assert reg.names() == ["alpha"] and "alpha" in reg and reg.lookup("alpha") is Alpha
    assert reg.options("alpha") == {"size": None, "depth": 2, "width": None}
    with pytest.raises(ValueError, match="unknown widget 'alpah'; did you mean 'alpha'"):
        reg.lookup("alpah")
    with pytest.raises(ValueError, match=r"'dpeth' -> did you mean 'depth'.*accepted: size, depth, width"):
        reg.check_options("alpha", {"dpeth": 3})
    reg.check_options("alpha", {"depth": 3})
    with pytest.raises(ValueError, match="already registered"):
        reg.register(type("Other", (), {"name": "alpha"}))


def test_plugin_module_registers_a_mixer(tmp_path):
    """A module named in $WERSA_PLUGINS is imported with wersa.mixers; a broken one fails loudly."""
    (tmp_path / "my_plugin.py").write_text(textwrap.dedent('''
        import wersa
        from wersa.mixers import mixer_class

        base = mixer_class("fnet")

        @wersa.register_mixer
        class Renamed(base):
            capabilities = wersa.Capabilities(**{**base.capabilities.as_dict(), "name": "plugin_fnet"})
    '''))
    (tmp_path / "broken_plugin.py").write_text("raise RuntimeError('boom')\n")
    code = "import wersa; print('plugin_fnet' in wersa.list_mixers())"
    env = {"PYTHONPATH": f"{tmp_path}:{':'.join(sys.path)}", "WERSA_PLUGINS": "my_plugin"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"
    env["WERSA_PLUGINS"] = "broken_plugin"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "plug-in module 'broken_plugin'" in out.stderr and "boom" in out.stderr


def test_example_option_sets_come_from_the_mixer_class():
    """The matrix and the property tests build each mixer with ``[{}] + cls.example_options``."""
    import wersa
    from wersa.mixers import mixer_class

    sets = wersa.mixer_example_options("wersa")
    assert sets[0] == {} and {"recompute_gates": True} in sets and len(sets) > 2
    for name in wersa.list_mixers():
        assert wersa.mixer_example_options(name) == [{}, *mixer_class(name).example_options], name


def test_plugin_example_options_are_used_and_checked(tmp_path):
    """A plug-in's own option sets reach the tests; one naming an option it does not take fails loudly."""
    (tmp_path / "options_plugin.py").write_text(textwrap.dedent('''
        import wersa
        from wersa.mixers import mixer_class

        base = mixer_class("fnet")

        def variant(name, sets):
            caps = wersa.Capabilities(**{**base.capabilities.as_dict(), "name": name})
            return wersa.register_mixer(type(name, (base,), {"capabilities": caps, "example_options": sets}))

        variant("fnet_ortho", ({"norm": "ortho"},))
        variant("fnet_typo", ({"nrom": "ortho"},))
    '''))
    code = textwrap.dedent('''
        import wersa
        print(wersa.mixer_example_options("fnet_ortho"))
        try:
            wersa.mixer_example_options("fnet_typo")
        except ValueError as exc:
            print("refused:", exc)
    ''')
    env = {"PYTHONPATH": f"{tmp_path}:{':'.join(sys.path)}", "WERSA_PLUGINS": "options_plugin"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "[{}, {'norm': 'ortho'}]"
    assert lines[1].startswith("refused:") and "example_options" in lines[1] and "'nrom'" in lines[1]
