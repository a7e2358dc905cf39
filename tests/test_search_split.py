"""The search's image split: seeded by the run's seed unless ``split_seed`` fixes it across seeds."""

import pytest

from hinas.data.images import load_images
from hinas.engine.settings import SearchConfig, resolve
from hinas.errors import ConfigError
from hinas.jobs.search import data_split


def names(images):
    return sorted(name for name, _ in images)


def test_a_fixed_split_seed_validates_every_seed_on_the_same_images():
    images = load_images("embedded-train")
    own = [names(data_split(SearchConfig(seed=seed, val_images=2), images)[2]) for seed in range(4)]
    assert len({tuple(v) for v in own}) > 1  # by default each seed holds out its own images
    fixed = [data_split(SearchConfig(seed=seed, val_images=2, split_seed=0), images) for seed in range(4)]
    assert all([names(part) for part in split] == [names(part) for part in fixed[0]] for split in fixed)
    assert names(fixed[0][2]) == own[0]  # split seed 0 is seed 0's own split


def test_the_equal_time_searches_share_one_split_and_a_bad_split_seed_is_refused():
    from hinas.studies.results import PROFILES, grid

    searches = [j.cfg for j in grid(PROFILES["equal-time"]) if j.kind == "search"]
    assert len({c.seed for c in searches}) == 5 and {c.split_seed for c in searches} == {0}
    with pytest.raises(ConfigError, match="split_seed"):
        resolve(SearchConfig, overrides=["split_seed=-2"])
