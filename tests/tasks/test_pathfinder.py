import numpy as np
import pytest
from scipy import ndimage

from wersa.tasks import build_task
from wersa.tasks.pathfinder import draw_pathfinder

EIGHT_NEIGHBOURS = np.ones((3, 3), dtype=int)


def _markers_joined(solid, markers):
    components, _ = ndimage.label(solid > 0, structure=EIGHT_NEIGHBOURS)
    (r0, c0), (r1, c1) = markers
    return components[r0, c0] == components[r1, c1]


@pytest.mark.parametrize("image_size, count", [(32, 40), (64, 8)])
def test_label_is_connectivity_of_the_gap_free_drawing(image_size, count):
    task = build_task("pathfinder", image_size=image_size, num_train=count, num_validation=0, num_test=0)
    for i in range(count):
        ex = task.draw("train", i)
        assert ex.label == i % 2
        assert _markers_joined(ex.solid, ex.markers) == bool(ex.label)
        assert ((ex.image > 0) <= (ex.solid > 0)).all()  # dashes are a subset of the curve


def test_dataset_tokens_match_drawings_and_are_balanced():
    task = build_task("pathfinder", image_size=32, num_train=6, num_validation=2, num_test=0)
    ds = task.split("train")
    assert task.info.max_length == 1024 and len(ds) == 6
    assert ds.labels.tolist() == [0, 1, 0, 1, 0, 1]
    assert set(ds.tokens.unique().tolist()) <= {1, 256}
    assert np.array_equal(ds[3]["input_ids"].numpy(), task.draw("train", 3).image.reshape(-1).astype(np.int64) + 1)


def test_ink_and_marker_distance_do_not_give_the_label_away():
    rng = np.random.default_rng(0)
    ink, dist = {0: [], 1: []}, {0: [], 1: []}
    for i in range(200):
        ex = draw_pathfinder(rng, 32, i % 2, num_distractors=2, curve_length=19, dash_length=3,
                             gap_length=2, marker_radius=1)
        ink[ex.label].append((ex.image > 0).sum())
        (a, b), (c, d) = ex.markers
        dist[ex.label].append(np.hypot(a - c, b - d))
    assert abs(np.mean(ink[0]) - np.mean(ink[1])) < 0.1 * np.mean(ink[1])
    assert abs(np.mean(dist[0]) - np.mean(dist[1])) < 0.2 * np.mean(dist[1])


def test_impossible_layout_raises_clear_error():
    with pytest.raises(RuntimeError, match="lower num_distractors"):
        draw_pathfinder(np.random.default_rng(0), 16, 1, num_distractors=30, curve_length=12,
                        dash_length=3, gap_length=2, marker_radius=1, max_tries=3)
    with pytest.raises(ValueError, match="image_size"):
        build_task("pathfinder", image_size=8)
