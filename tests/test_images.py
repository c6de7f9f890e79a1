"""The image domain: data_prep.images on real image files (PNG, JPEG, WebP, greyscale, RGBA, corrupt),
pixels read back through the trainer's readers, the patch-masking baseline, grid-blind SMA masking, and
a tiny image pretraining run with resume through the real trainer."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers_model import tiny_perceiver
from sma.config import ConfigError, MaskingConfig, load_config
from sma.data import build_loader
from sma.inputs import Batch
from sma.masking import patch_mask
from sma.model import build_pretrain_model
from test_model import _permute_model, _train
from test_prep_formats import FORMATS

uses_shards = pytest.mark.usefixtures("streaming_shm_cleanup")

RES = 16
REPO = Path(__file__).resolve().parents[1]


# ---- real image files ------------------------------------------------------------------------------

def _rgb(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth colour gradient plus noise (JPEG-friendly, but every pixel distinct enough to check)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([yy * 255 // max(1, h - 1), xx * 255 // max(1, w - 1), (yy + xx) * 127 // max(1, h + w)], -1)
    return np.clip(base + rng.integers(-20, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def write_image_folder(root: Path, train_per_class: int = 2) -> dict[str, Path]:
    """ImageNet's layout, ``train/`` and ``val/`` with class folders, in every format the command must
    read: PNG, JPEG, WebP, greyscale, RGBA (and, in train/dog, a corrupt and a truncated JPEG). Returns
    the good files by their path within the root."""
    files: dict[str, Path] = {}

    def save(rel: str, img: Image.Image, **kw) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, **kw)
        files[rel] = path

    for split, n in (("train", train_per_class), ("val", 1)):
        for i in range(n):
            s = (0 if split == "train" else 100) + 10 * i
            save(f"{split}/cat/c{i}.png", Image.fromarray(_rgb(24 + 2 * i, 40, s)))
            save(f"{split}/cat/c{i}.jpg", Image.fromarray(_rgb(50, 30 + i, s + 1)), quality=90)
            save(f"{split}/dog/d{i}_grey.png", Image.fromarray(_rgb(RES, RES, s + 2)[..., 0], "L"))  # exact size
            save(f"{split}/dog/d{i}_rgba.png", Image.fromarray(np.dstack([_rgb(32, 48, s + 3), _rgb(32, 48, s + 4)[..., :1]]),
                                                                "RGBA"))
            save(f"{split}/dog/d{i}.webp", Image.fromarray(_rgb(20, 20, s + 5)), lossless=True)
    (root / "train" / "dog" / "notes.txt").write_text("not an image: ignored")
    return files


def write_bad_images(root: Path) -> list[str]:
    good = io.BytesIO()
    Image.fromarray(_rgb(64, 64, 7)).save(good, format="JPEG")
    (root / "train" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 this is not a JPEG at all")
    (root / "train" / "dog" / "truncated.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    return ["train/dog/broken.jpg", "train/dog/truncated.jpg"]


def expected_pixels(path: Path, res: int = RES) -> np.ndarray:
    """Pillow's own pipeline for one file: RGB, short side to ``res`` (bicubic), centre crop."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    size = (res, int(res * h / w)) if w <= h else (int(res * w / h), res)
    if size != (w, h):
        img = img.resize(size, Image.BICUBIC)
    left, top = int(round((size[0] - res) / 2)), int(round((size[1] - res) / 2))
    return np.asarray(img.crop((left, top, left + res, top + res))).reshape(-1, 3)


def read_pixels(url: str, fmt: str, res: int = RES) -> list[tuple[np.ndarray, float]]:
    """Every sample of a split as stored: the reader's standardized floats turned back into uint8 with the
    split's statistics (exact: the values are whole numbers), and the label."""
    over = [f"data.format={fmt}", f"data.train_url={url}", f"data.eval_url={url}", f"model.max_len={res * res}",
            "model.modality=continuous", "model.d_raw=3", "model.num_latents=16", "data.micro_batch_size=1",
            f"run_dir={Path(url).parent}/run"]
    stats = json.loads((Path(url) / "stats.json").read_text())
    mean, std = np.array(stats["mean"]), np.array(stats["std"])
    out = []
    for b in build_loader(load_config(None, over), "eval", 0, 1):
        x = b.inputs[0].numpy().astype(np.float64) * std + mean
        out.append((np.rint(x).astype(np.uint8), float(b.targets[0])))
    return out


def prep(src: Path, dst: Path, fmt: str = "mds", *extra: str) -> dict:
    from data_prep import images

    return images.main(["--src", str(src), "--dst", str(dst), "--format", fmt, "--resolution", str(RES),
                        "--quiet", *extra])


# ---- prep ------------------------------------------------------------------------------------------

@uses_shards
@pytest.mark.parametrize("fmt", FORMATS)
def test_image_folder_round_trip_keeps_pixels_labels_classes_and_train_statistics(tmp_path, fmt):
    files = write_image_folder(tmp_path / "imgs")
    manifest = prep(tmp_path / "imgs", tmp_path / "out", fmt, "--workers", "2", "--images-per-part", "3")
    assert manifest["classes"] == ["cat", "dog"]
    assert {s: manifest["splits"][s]["samples"] for s in ("train", "val")} == {"train": 10, "val": 5}
    assert manifest["splits"]["train"]["grid"] == [RES, RES, 3] and manifest["splits"]["val"]["d_raw"] == 3
    for split in ("train", "val"):
        rels = sorted(r for r in files if r.startswith(f"{split}/"))  # stored order: sorted paths
        got = read_pixels(str(tmp_path / "out" / split), fmt)
        assert [y for _, y in got] == [0.0 if "/cat/" in r else 1.0 for r in rels]
        for (px, _), rel in zip(got, rels):
            assert np.array_equal(px, expected_pixels(files[rel])), rel
    grey = read_pixels(str(tmp_path / "out" / "train"), fmt)[sorted(f for f in files if f.startswith("train/")).index(
        "train/dog/d0_grey.png")][0]
    raw = np.asarray(Image.open(files["train/dog/d0_grey.png"])).reshape(-1)
    assert np.array_equal(grey, np.repeat(raw[:, None], 3, 1))  # already RES x RES: the file's own pixels
    train = np.concatenate([expected_pixels(files[r]) for r in files if r.startswith("train/")]).astype(np.float64)
    stats = manifest["stats"]
    assert stats["count"] == len(train) and np.allclose(stats["mean"], [train.mean(0)])
    assert np.allclose(stats["std"], [train.std(0)])


@uses_shards
def test_shards_store_one_byte_per_value(tmp_path):
    write_image_folder(tmp_path / "imgs")
    manifest = prep(tmp_path / "imgs", tmp_path / "out", "mds")
    stored = sum(f["bytes"] for p in manifest["splits"]["train"]["parts"] for f in p["files"]
                 if f["name"].endswith(".mds"))
    assert stored < 10 * (RES * RES * 3 + 200)  # uint8 plus per-sample headers, not 4 bytes per value


@uses_shards
def test_rerun_is_idempotent_and_rewrites_nothing(tmp_path):
    write_image_folder(tmp_path / "imgs")
    first = prep(tmp_path / "imgs", tmp_path / "out", "wds", "--images-per-part", "4")
    files = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (tmp_path / "out").rglob("*") if p.is_file()
             and p.suffix == ".tar"}
    second = prep(tmp_path / "imgs", tmp_path / "out", "wds", "--images-per-part", "4")
    assert first["splits"] == second["splits"]
    assert files == {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}
    third = prep(tmp_path / "imgs", tmp_path / "again", "wds", "--images-per-part", "4")
    assert [(tmp_path / "again" / p.relative_to(tmp_path / "out")).read_bytes() for p in files] == [
        b for b, _ in files.values()]  # deterministic: byte-identical shards in another destination
    assert third["stats"] == first["stats"]


@uses_shards
def test_corrupt_and_truncated_images_stop_with_their_path_or_are_skipped_and_counted(tmp_path, caplog):
    write_image_folder(tmp_path / "imgs")
    bad = write_bad_images(tmp_path / "imgs")
    with pytest.raises(SystemExit) as stop:
        prep(tmp_path / "imgs", tmp_path / "stop")
    assert stop.value.code == 1
    assert "dog/broken.jpg: ValueError: not a decodable image" in caplog.text
    manifest = prep(tmp_path / "imgs", tmp_path / "skip", "mds", "--on-error", "skip")
    train = manifest["splits"]["train"]
    assert train["samples"] == 10 and train["skipped_records"] == len(bad)
    errors = [e for p in train["parts"] for e in p["errors"]]
    assert any("dog/broken.jpg" in e for e in errors) and any("dog/truncated.jpg: ValueError" in e and "truncated" in e
                                                               for e in errors)


@uses_shards
def test_tar_archive_of_class_folders_gives_the_same_samples_as_the_folder(tmp_path):
    write_image_folder(tmp_path / "imgs")
    with tarfile.open(tmp_path / "imagenet_train.tar", "w") as tar:
        for p in sorted((tmp_path / "imgs" / "train").rglob("*")):
            if p.is_file():
                tar.add(p, arcname=str(p.relative_to(tmp_path / "imgs" / "train")))
    from_tar = prep(tmp_path / "imagenet_train.tar", tmp_path / "tar", "wds")
    prep(tmp_path / "imgs", tmp_path / "folder", "wds")
    assert from_tar["classes"] == ["cat", "dog"] and list(from_tar["splits"]) == ["train"]
    got = read_pixels(str(tmp_path / "tar" / "train"), "wds")
    want = read_pixels(str(tmp_path / "folder" / "train"), "wds")
    assert sorted((y, px.tobytes()) for px, y in got) == sorted((y, px.tobytes()) for px, y in want)


@uses_shards
def test_flat_folder_has_no_labels_and_eval_fraction_carves_a_stable_val_split(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(20):
        Image.fromarray(_rgb(20, 24, i)).save(flat / f"img{i:02d}.png")
    manifest = prep(flat, tmp_path / "out", "mds", "--eval-fraction", "0.3")
    counts = {s: manifest["splits"][s]["samples"] for s in ("train", "val")}
    assert counts["train"] + counts["val"] == 20 and 0 < counts["val"] < 10 and manifest["classes"] == []
    again = prep(flat, tmp_path / "again", "mds", "--eval-fraction", "0.3", "--workers", "2", "--images-per-part", "3")
    assert {s: again["splits"][s]["samples"] for s in ("train", "val")} == counts
    over = ["data.format=mds", f"data.train_url={tmp_path}/out/val", "model.max_len=256", "model.modality=continuous",
            "model.d_raw=3", "model.num_latents=16", "data.micro_batch_size=1", f"run_dir={tmp_path}/run"]
    batch = next(iter(build_loader(load_config(None, over), "train", 0, 1)))
    assert batch.targets is None and batch.inputs.shape == (1, RES * RES, 3)


@uses_shards
def test_loader_start_up_checks_accept_the_image_grid_and_name_mismatches(tmp_path):
    write_image_folder(tmp_path / "imgs")
    prep(tmp_path / "imgs", tmp_path / "out")
    base = ["data.format=mds", f"data.train_url={tmp_path}/out/train", "model.modality=continuous",
            "model.num_latents=16", f"run_dir={tmp_path}/run"]
    ok = load_config(None, [*base, "model.d_raw=3", f"model.max_len={RES * RES}", "masking.mode=patch",
                            f"masking.patch_grid=[{RES},{RES}]", "masking.patch_size=4"])
    assert next(iter(build_loader(ok, "train", 0, 1))).inputs.shape[1:] == (RES * RES, 3)
    with pytest.raises(ConfigError, match="model.d_raw: 1, but the samples of the train split"):
        build_loader(load_config(None, [*base, f"model.max_len={RES * RES}"]), "train", 0, 1)
    with pytest.raises(ConfigError, match=r"masking.patch_grid: \[8, 32\], but the images .* are 16 x 16"):
        build_loader(load_config(None, [*base, "model.d_raw=3", f"model.max_len={RES * RES}", "masking.mode=patch",
                                        "masking.patch_grid=[8,32]", "masking.patch_size=4"]), "train", 0, 1)


# ---- the patch baseline ----------------------------------------------------------------------------

@pytest.mark.parametrize("grid,size,ratio", [((16, 16), 4, 0.75), ((12, 20), 4, 0.5), ((10, 14), 4, 0.3),
                                             ((16, 16), 5, 0.6)])
def test_patch_baseline_masks_whole_patches_and_exactly_round_r_n_tokens(grid, size, ratio):
    h, w = grid
    valid = torch.ones(8, h * w, dtype=torch.bool)
    mask = patch_mask(valid, ratio, grid, size, generator=torch.Generator().manual_seed(0))
    assert (mask.sum(1) == round(ratio * h * w)).all()
    patch = ((torch.arange(h)[:, None] // size) * (-(-w // size)) + torch.arange(w)[None, :] // size).reshape(-1)
    for row in mask:
        partial = [p for p in patch.unique() if 0 < row[patch == p].sum() < (patch == p).sum()]
        assert len(partial) <= 1  # whole patches, but for the one cut last
        if partial:  # the cut patch keeps its first pixels in row-major order
            cut = row[patch == partial[0]]
            assert cut.tolist() == sorted(cut.tolist(), reverse=True)
    other = patch_mask(valid, ratio, grid, size, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(mask, other)


def test_patch_config_is_validated_naming_the_key():
    base = ["model.modality=continuous", "model.d_raw=3", "model.max_len=256", "model.num_latents=16",
            "masking.mode=patch"]
    assert load_config(None, [*base, "masking.patch_grid=[16,16]"]).masking.patch_size == 16
    with pytest.raises(ConfigError, match=r"masking.patch_grid: the patch baseline needs the image grid"):
        load_config(None, base)
    with pytest.raises(ConfigError, match=r"masking.patch_grid: \[8, 16\] has 128 pixels, model.max_len is 256"):
        load_config(None, [*base, "masking.patch_grid=[8,16]"])
    with pytest.raises(ConfigError, match="masking.patch_size: must lie in"):
        load_config(None, [*base, "masking.patch_grid=[16,16]", "masking.patch_size=17"])


def test_image_recipe_and_its_baselines_differ_only_in_masking_mode_and_run_dir():
    from sma.config import to_dict

    base = load_config(REPO / "configs" / "image_8l.yaml")
    m = base.model
    assert (m.modality, m.d_raw, m.max_len, m.encoder, m.num_latents, m.num_layers) == (
        "continuous", 3, 192 * 192, "perceiver", 512, 8)
    assert base.masking.ratio == 0.75 and m.activation_checkpointing and base.precision == "bf16"
    assert round(m.max_len * base.masking.ratio / base.masking.num_per_query) == 256  # chosen latents
    for name, mode in (("image_8l_random", "random"), ("image_patch", "patch")):
        other = to_dict(load_config(REPO / "configs" / f"{name}.yaml"))
        assert other["masking"]["mode"] == mode
        other["masking"]["mode"], other["run_dir"] = "guided", to_dict(base)["run_dir"]
        assert other == to_dict(base), name
    tiny = load_config(REPO / "configs" / "tiny_image.yaml", ["masking.mode=patch"])
    assert tiny.model.max_len == 32 * 32 and tiny.masking.patch_grid == [32, 32]


def _image_batch(h: int = 8, w: int = 8, batch: int = 4) -> Batch:
    x = torch.randn(batch, h * w, 3, generator=torch.Generator().manual_seed(0))
    return Batch(x, torch.ones(batch, h * w, dtype=torch.bool))


def _image_model(masking: MaskingConfig, n: int = 64):
    torch.manual_seed(0)
    return build_pretrain_model(tiny_perceiver(n, modality="continuous", d_raw=3, num_latents=8), masking)


@pytest.mark.parametrize("mode", ["guided", "random"])
def test_guided_and_random_masks_never_read_the_grid(mode):
    batch = _image_batch()
    masks = []
    for grid in ([], [8, 8], [4, 16]):
        masking = MaskingConfig(mode=mode, ratio=0.75, num_per_query=12, patch_grid=grid, patch_size=2)
        masks.append(_image_model(masking)(batch, generator=torch.Generator().manual_seed(3)).mask)
    assert torch.equal(masks[0], masks[1]) and torch.equal(masks[0], masks[2])


@pytest.mark.parametrize("mode", ["guided", "random"])
def test_image_training_is_equivalent_under_a_fixed_pixel_permutation(mode):
    masking = MaskingConfig(mode=mode, ratio=0.75, num_per_query=12, patch_grid=[8, 8], patch_size=4)
    model = _image_model(masking)
    batch = _image_batch()
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(1))
    permuted = Batch(batch.inputs[:, perm], batch.valid[:, perm])
    permuted_model = _permute_model(model, perm)
    base = _train(model, [batch], steps=4, seed=4)
    moved = _train(permuted_model, [permuted], steps=4, seed=4)
    assert len(set(base)) > 1 and base == pytest.approx(moved, rel=1e-4, abs=1e-6)


def test_patch_mode_trains_the_model_on_image_batches():
    masking = MaskingConfig(mode="patch", ratio=0.75, patch_grid=[8, 8], patch_size=4)
    out = _image_model(masking)(_image_batch())
    assert (out.mask.sum(1) == 48).all() and torch.isfinite(out.loss)
    out.loss.backward()


# ---- fine-tuning: the images task ------------------------------------------------------------------

def test_images_task_loads_an_image_folder_like_the_prep_command(tmp_path):
    from sma.config import TaskConfig
    from sma.finetune.tasks import load_task

    files = write_image_folder(tmp_path / "imgs", train_per_class=4)
    data = load_task(TaskConfig(name="images", path=str(tmp_path / "imgs"), fractions=[0.7, 0.2, 0.1]), RES * RES)
    assert (data.kind, data.num_outputs, data.modality, data.metrics) == ("classification", 2, "continuous",
                                                                         ("accuracy",))
    assert data.label_names == ["cat", "dog"] and data.info["grid"] == [RES, RES, 3]
    assert {s: len(data.splits[s]) for s in ("train", "valid", "test")} == {"train": 16, "valid": 4, "test": 5}
    ids = {s: data.splits[s].ids for s in data.splits}
    assert sorted(ids["train"] + ids["valid"]) == sorted(r for r in files if r.startswith("train/"))
    train_px = np.concatenate([expected_pixels(files[i]) for i in ids["train"]]).astype(np.float64)
    mean, std = train_px.mean(0), train_px.std(0)
    test = data.splits["test"]
    assert all(data.splits[s].inputs.raw.dtype == np.uint8 for s in data.splits)  # a byte per value held
    for x, y, rel in zip(test.inputs, test.targets, test.ids):
        assert x.shape == (RES * RES, 3) and x.dtype == np.float32
        assert np.allclose(x, (expected_pixels(files[rel]) - mean) / std, atol=1e-4)  # train statistics
        assert y == (0 if "/cat/" in rel else 1)
    again = load_task(TaskConfig(name="images", path=str(tmp_path / "imgs"), fractions=[0.7, 0.2, 0.1]), RES * RES)
    other = load_task(TaskConfig(name="images", path=str(tmp_path / "imgs"), fractions=[0.7, 0.2, 0.1],
                                 split_seed=1), RES * RES)
    assert again.splits["valid"].ids == ids["valid"] != other.splits["valid"].ids


def test_images_task_names_bad_settings_and_bad_files(tmp_path):
    from sma.config import TaskConfig
    from sma.finetune.tasks import load_task
    from sma.inputs import InputError

    write_image_folder(tmp_path / "imgs")
    with pytest.raises(ConfigError, match="model.max_len: .* 200 is not a square"):
        load_task(TaskConfig(name="images", path=str(tmp_path / "imgs")), 200)
    with pytest.raises(ConfigError, match="task.path: .* has no train/ folder"):
        load_task(TaskConfig(name="images", path=str(tmp_path / "imgs" / "train")), RES * RES)
    write_bad_images(tmp_path / "imgs")
    with pytest.raises(InputError, match=r"train/dog/broken.jpg: not a decodable image"):
        load_task(TaskConfig(name="images", path=str(tmp_path / "imgs")), RES * RES)


# ---- a tiny pretraining run through the real trainer -------------------------------------------------

@pytest.mark.slow
@uses_shards
def test_tiny_image_pretraining_runs_from_image_shards_and_resumes(tmp_path):
    from data_prep import images
    from helpers_train import run
    from sma.train.metrics import read_metrics

    write_image_folder(tmp_path / "imgs", train_per_class=4)
    images.main(["--src", str(tmp_path / "imgs"), "--dst", str(tmp_path / "shards"), "--resolution", "32", "--quiet"])
    config = str(REPO / "configs" / "tiny_image.yaml")
    common = [f"data.train_url={tmp_path}/shards/train", f"data.eval_url={tmp_path}/shards/val",
              "data.micro_batch_size=4", "data.num_workers=0", "log_every=1", "eval_every=3", "eval_batches=1",
              "checkpoint_every=3", "wandb_mode=disabled", f"run_dir={tmp_path}/run"]
    run(1, [*common, "max_steps=3"], config=config)
    run(1, [*common, "max_steps=6", "resume=auto"], config=config)
    records = read_metrics(tmp_path / "run")
    steps = [r["step"] for r in records if "loss" in r]
    assert steps[:3] == [1, 2, 3] and steps[-3:] == [4, 5, 6]
    assert all(np.isfinite(r["loss"]) for r in records if "loss" in r)
    assert any("eval_loss_random_masks" in r for r in records)
    assert (tmp_path / "run" / "checkpoints" / "step00000006").is_dir()
    # image classification through the fine-tuning command, from that checkpoint
    from helpers_train import FINETUNE

    ft = tmp_path / "ft.yaml"
    ft.write_text(f"extends: {config}\ntask: {{name: images, path: {tmp_path / 'imgs'}, fractions: [0.8, 0.2, 0.0]}}\n"
                  "finetune: {epochs: 2, seeds: [0]}\ndata: {micro_batch_size: 4}\nwandb_mode: disabled\n")
    run(1, [f"init={tmp_path}/run/checkpoints", f"run_dir={tmp_path}/ft"], config=str(ft), script=FINETUNE)
    results = json.loads((tmp_path / "ft" / "results.json").read_text())
    assert results["task"] == "images" and results["sizes"]["test"] == 5  # val/ holds 5 images
    assert 0.0 <= results["test"]["accuracy"]["mean"] <= 1.0
