"""The tuner's rules: monotone, bounded, deterministic, pinned values kept, bad input in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from lora_factory.config import TrainConfig
from lora_factory.errors import ConfigError
from lora_factory.profiles import load_config
from lora_factory.schemas import CaptionStats, CurateStats
from training.tuner import (
    FAMILIES,
    StatsError,
    TuneRequest,
    TuneStats,
    estimate,
    family_row,
    markdown,
    read_stats_file,
    recommend,
    request_for,
    stats_from,
)
from training.tuner.rules import PRIORS, RANK_BOUNDS, defaults_markdown

CLI = Path(sys.executable).parent / "lora-factory"
GPU_FAMILIES = ("sd15", "sdxl")
STATS = TuneStats(num_images=40, caption_coverage=0.9, words_mean=12.0, tags_per_caption=1.0, text_diversity=0.6,
                  visual_diversity=0.35, short_side_median=2000.0, non_square_share=0.3, domain="photo")


def rec_for(family: str = "sd15", stats: TuneStats = STATS, **kw: object):
    return recommend(TuneRequest(stats, family_row(family), **kw))  # type: ignore[arg-type]


# Monotone and bounded ----------------------------------------------------------------------------

@pytest.mark.parametrize("family", list(FAMILIES))
def test_more_images_never_mean_fewer_steps(family: str) -> None:
    counts = [1, 2, 3, 5, 8, 13, 23, 40, 75, 150, 299, 300, 301, 600, 1200, 5000, 50000]
    steps = [rec_for(family, replace(STATS, num_images=n)).config.max_steps for n in counts]
    assert steps == sorted(steps)
    assert steps[0] < steps[-1]  # and they do grow: the rule is not a constant
    bounds = PRIORS[family]
    assert all(bounds.min_steps <= s <= bounds.max_steps for s in steps)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_more_diversity_never_means_a_lower_rank(family: str) -> None:
    grid = [i / 20 for i in range(21)]
    ranks = [rec_for(family, replace(STATS, text_diversity=d, visual_diversity=d * 0.6)).config.rank for d in grid]
    assert ranks == sorted(ranks) and ranks[0] < ranks[-1]
    assert all(RANK_BOUNDS[0] <= r <= RANK_BOUNDS[1] for r in ranks)
    # One signal alone moves it too, in the same direction.
    visual = [rec_for(family, replace(STATS, text_diversity=None, visual_diversity=d)).config.rank for d in grid]
    assert visual == sorted(visual)


@pytest.mark.parametrize("family", GPU_FAMILIES)
def test_a_smaller_gpu_budget_never_gets_a_larger_estimated_peak(family: str) -> None:
    budgets = [48, 32, 24, 20, 16, 14, 12, 11, 10, 9, 8, 7, 6, 5, 4.5, 4, 3.5, 3, 2.5]
    peaks = []
    for gb in budgets:
        try:
            rec = rec_for(family, gpu_gb=gb)
        except ConfigError:
            continue
        assert rec.memory.gib() <= gb
        peaks.append(rec.memory.gib())
    assert len(peaks) >= 4 and peaks == sorted(peaks, reverse=True) and peaks[0] > peaks[-1]


def test_the_budget_fit_changes_only_memory_settings_and_says_why() -> None:
    roomy, tight = rec_for("sdxl", gpu_gb=48), rec_for("sdxl", gpu_gb=11)
    changed = {k for k in TrainConfig.model_fields if getattr(roomy.config, k) != getattr(tight.config, k)}
    assert changed and changed <= {"gradient_checkpointing", "batch_size", "gradient_accumulation_steps",
                                   "resolution", "optimizer"}
    assert all(tight.choices[k].source == "memory" for k in changed)
    assert "to fit 11 GiB" in markdown(tight)
    effective = tight.config.batch_size * tight.config.gradient_accumulation_steps
    assert effective == roomy.config.batch_size * roomy.config.gradient_accumulation_steps


def test_values_stay_in_bounds_for_odd_datasets() -> None:
    odd = [TuneStats(num_images=1), TuneStats(num_images=1, caption_coverage=0.0, text_diversity=2.0,
                                             visual_diversity=-1.0, short_side_median=8.0, domain="anime"),
           TuneStats(num_images=10**6, tags_per_caption=30.0, text_diversity=0.0, visual_diversity=0.0)]
    for family in FAMILIES:
        for stats in odd:
            cfg = rec_for(family, stats).config
            assert TrainConfig.model_validate(cfg.model_dump()) == cfg
            assert RANK_BOUNDS[0] <= cfg.rank <= RANK_BOUNDS[1]
            assert family_row(family).min_resolution <= cfg.resolution <= family_row(family).resolution
            assert 0 <= cfg.caption_dropout <= 0.2 and cfg.lr_warmup_steps < cfg.max_steps
            assert cfg.batch_size <= max(1, stats.num_images)


def test_the_same_inputs_give_the_same_config_and_rationale() -> None:
    a, b = rec_for("sdxl", gpu_gb=12), rec_for("sdxl", gpu_gb=12)
    assert a.config == b.config and markdown(a) == markdown(b)


def test_task_and_statistics_rules_do_what_the_rationale_says() -> None:
    style = rec_for("sd15", replace(STATS, domain="illustration"))
    assert style.task == "style" and style.config.random_flip and style.config.noise_offset == 0
    subject = rec_for("sd15")
    assert subject.task == "subject" and not subject.config.random_flip and subject.config.noise_offset > 0
    concept = rec_for("sd15", task_type="concept")  # an object: half the subject rank
    assert concept.config.rank == subject.config.rank // 2
    tags = rec_for("sd15", replace(STATS, tags_per_caption=8.0)).config
    assert tags.shuffle_tags and not tags.cache_text_embeddings and tags.keep_tokens == 1
    uncaptioned = rec_for("sd15", replace(STATS, caption_coverage=0.2)).config
    assert uncaptioned.caption_dropout > subject.config.caption_dropout
    small = rec_for("sd15", replace(STATS, short_side_median=300.0)).config
    assert small.resolution == 256  # the images' size, on the bucket grid, not below the family minimum
    assert rec_for("sd15", replace(STATS, num_images=8)).config.validation_split == 0  # too few to hold out


def test_time_budget_caps_the_steps() -> None:
    free = rec_for("sdxl", replace(STATS, num_images=2000))
    capped = rec_for("sdxl", replace(STATS, num_images=2000), time_budget_h=0.5, seconds_per_step=1.0)
    assert capped.config.max_steps < free.config.max_steps
    assert capped.choices["max_steps"].source == "budget" and "tune.seconds_per_step" in capped.choices["max_steps"].why


def test_readme_shows_the_community_defaults_table() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert defaults_markdown() in readme


# Pinned values -----------------------------------------------------------------------------------

def test_explicit_train_overrides_are_pinned_and_kept_while_the_rest_adapts() -> None:
    cfg = load_config("sd15", {"train.rank": 8, "train.optimizer": "prodigy", "train.batch_size": 2},
                      environ={"LORA_FACTORY_TRAIN__MAX_STEPS": "123"})
    assert cfg.tune.pin == ["batch_size", "max_steps", "optimizer", "rank"]
    rec = recommend(request_for(cfg, STATS, family_row("sd15")))
    c = rec.config
    assert (c.rank, c.optimizer, c.batch_size, c.max_steps) == (8, "prodigy", 2, 123)
    assert c.alpha == 8 * PRIORS["sd15"].alpha_ratio  # alpha follows the pinned rank
    assert c.learning_rate == 1.0  # Prodigy's rate is a multiplier
    assert c.batch_size * c.gradient_accumulation_steps == PRIORS["sd15"].effective_batch
    assert c.lr_warmup_steps == round(0.05 * 123) and c.checkpoint_every <= 123
    assert all(rec.choices[k].source == "pinned" for k in ("rank", "optimizer", "batch_size", "max_steps"))
    assert "| `rank` | `8` | your pin | pinned: you set train.rank |" in markdown(rec)


def test_the_profile_train_section_is_not_pinned_but_a_profile_can_pin() -> None:
    assert load_config("sd15", environ={}).tune.pin == []
    tiny = load_config("tiny", environ={})
    assert tiny.tune.pin == ["max_steps"] and tiny.train.max_steps == 20
    with pytest.raises(ConfigError, match=r"tune.pin: .*\['rnak'\] are not train keys"):
        load_config("tiny", {"tune.pin": ["rnak"]}, environ={})


def test_a_pinned_cpu_device_turns_off_gpu_only_settings() -> None:
    cfg = load_config("sdxl", {"train.device": "cpu"}, environ={})
    c = recommend(request_for(cfg, STATS, family_row("sdxl"))).config
    assert (c.device, c.mixed_precision, c.optimizer) == ("cpu", "no", "adamw")


def test_a_pinned_setting_the_budget_cannot_change_is_named_when_nothing_fits() -> None:
    assert rec_for("sdxl", gpu_gb=10).config.gradient_checkpointing  # fits, with checkpointing
    cfg = load_config("sdxl", {"train.gradient_checkpointing": False, "tune.gpu_gb": 10}, environ={})
    with pytest.raises(ConfigError, match="tune.gpu_gb 10 is too small for any sdxl config with your pinned "
                                          "gradient_checkpointing"):
        recommend(request_for(cfg, STATS, family_row("sdxl")))


def test_resume_keeps_earlier_pins_and_adds_new_ones() -> None:
    from lora_factory.profiles import config_from_data

    first = load_config("sd15", {"train.rank": 8}, environ={})
    resumed = config_from_data(first.model_dump(mode="json"), [{"train.max_steps": 50}], "resume")
    assert resumed.tune.pin == ["max_steps", "rank"] and resumed.train.rank == 8


# Bad input: one line each --------------------------------------------------------------------------

def test_a_budget_too_small_names_the_smallest_budget_that_works() -> None:
    with pytest.raises(ConfigError) as e:
        rec_for("sdxl", gpu_gb=3)
    line = str(e.value)
    assert "\n" not in line and "tune.gpu_gb 3 is too small for any sdxl config" in line
    smallest = float(line.split("to ")[-1].split(" or more")[0])
    fitted = rec_for("sdxl", gpu_gb=smallest)
    assert fitted.memory.gib() <= smallest and fitted.config.gradient_checkpointing


def test_an_unknown_family_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown model family 'flux2': choose one of sd15, sdxl, tiny-sd15, tiny-sdxl"):
        family_row("flux2")


def _curate_stats(**kw: object) -> dict:
    return {"schema_version": 1, "num_images": 30, "caption_coverage": 1.0, "caption_words_mean": 9.0,
            "caption_words_median": 9.0, "resolution_short_side_median": 900.0,
            "aspect_histogram": {"square": 10, "0.6-0.8": 20}, "models": {"clip_scorer": "x"},
            "text_diversity": {"mean_pairwise_distance": 0.7}, "visual_diversity": {"mean_pairwise_distance": 0.5},
            "estimated_domain": {"domain": "photo", "probabilities": {"photo": 0.9}}, **kw}


def test_statistics_files_missing_malformed_or_older_are_refused_in_one_line(tmp_path: Path) -> None:
    good = tmp_path / "stats.json"
    good.write_text(json.dumps(_curate_stats()))
    stats = stats_from(read_stats_file(good, CurateStats, "curate statistics"), None)
    assert (stats.num_images, stats.visual_diversity, stats.domain) == (30, 0.5, "photo")
    assert stats.non_square_share == pytest.approx(2 / 3)
    cases = {
        "missing.json": (None, "does not exist"),
        "broken.json": ('{"num_images": ', "is not valid JSON"),
        "list.json": ("[1, 2]", "holds list, not a mapping"),
        "old.json": (json.dumps({k: v for k, v in _curate_stats().items() if k != "schema_version"}),
                     "has schema_version 0, older than the 1 this version reads"),
        "new.json": (json.dumps(_curate_stats(schema_version=2)), "has schema_version 2, not the 1"),
        "bad.json": (json.dumps(_curate_stats(caption_coverage=3)), "caption_coverage: Input should be less"),
    }
    for name, (text, message) in cases.items():
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        with pytest.raises(StatsError) as e:
            read_stats_file(path, CurateStats, "curate statistics")
        assert message in str(e.value) and "\n" not in str(e.value) and str(path) in str(e.value)


def test_caption_statistics_win_for_count_and_captions() -> None:
    curate = CurateStats.model_validate(_curate_stats())
    captions = CaptionStats(num_images=28, captioned=20, coverage=20 / 28, words_mean=4.0, words_median=4.0,
                            words_max=9, tag_frequency={"a": 20, "b": 20, "c": 20}, trigger_word="tok",
                            task_type="concept")
    s = stats_from(curate, captions)
    assert (s.num_images, s.tags_per_caption, s.task_type, s.text_diversity) == (28, 3.0, "concept", 0.7)
    assert rec_for("sd15", s).task == "concept"


def test_the_memory_estimate_adds_up_and_grows_with_what_costs_memory() -> None:
    row = family_row("sdxl")
    base = TrainConfig(resolution=1024, rank=32, mixed_precision="bf16", optimizer="adamw8bit")
    mem = estimate(base, row)
    assert mem.total == sum(v for k, v in vars(mem).items() if isinstance(v, int))
    for change in ({"rank": 64}, {"batch_size": 2}, {"resolution": 1280}, {"optimizer": "adamw"},
                   {"mixed_precision": "no"}, {"train_text_encoder": True}, {"prior_preservation": True,
                                                                             "class_prompt": "a dog"}):
        assert estimate(base.model_copy(update=change), row).total > mem.total, change
    assert estimate(base.model_copy(update={"gradient_checkpointing": True}), row).total < mem.total


# The command line -------------------------------------------------------------------------------------

def test_cli_recommends_outside_the_factory_and_refuses_bad_input(tmp_path: Path) -> None:
    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps(_curate_stats()))
    ok = subprocess.run([str(CLI), "tune", "--stats", str(stats), "--gpu-gb", "12", "--family", "sdxl",
                         "--set", "train.rank=8", "--explain", "--out", str(tmp_path / "out"), "--home",
                         str(tmp_path / "home")], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "rank: 8\n" in ok.stdout and "# Training config rationale" in ok.stdout
    assert "against a budget of 12 GiB" in ok.stdout
    written = TrainConfig.model_validate(__import__("yaml").safe_load((tmp_path / "out" / "train_config.yaml").read_text()))
    assert written.rank == 8 and written.mixed_precision == "bf16"
    assert not (tmp_path / "home").exists()  # no tracking store was created just to look for history
    for args, message in ((["--family", "sdxxl"], "unknown model family 'sdxxl'"),
                          (["--family", "sdxl", "--gpu-gb", "2"], "tune.gpu_gb 2 is too small for any sdxl config"),
                          (["--family", "sd15", "--stats", str(tmp_path / "none.json")], "does not exist")):
        bad = subprocess.run([str(CLI), "tune", "--stats", str(stats), *args], capture_output=True, text=True,
                             timeout=300, cwd=tmp_path)
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and message in bad.stderr, bad.stderr
