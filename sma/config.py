"""The one configuration schema: dataclasses filled from omegaconf YAML plus ``key=value`` overrides,
validated at load time with errors that name the offending key.

Top-level run keys (``run_dir``, ``max_steps``, ``checkpoint_every``, ``resume``, ``zero_stage``,
``seed``) sit at the root so the same overrides work on every config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A bad configuration; the message names the key."""


@dataclass
class ModelConfig:
    """Embedding, encoder and decoder sizes (the SMA paper)."""

    modality: str = "bytes"  # bytes | continuous
    d_raw: int = 1  # continuous only: raw values per token
    max_len: int = 1024  # n: padded input length
    encoder: str = "perceiver"  # perceiver (cross-attention) | transformer (self-attention)
    d_embed: int = 512  # input embedding width (= model width for the transformer)
    num_latents: int = 256  # perceiver only
    d_latent: int = 1024  # perceiver only: latent width
    num_layers: int = 16  # self-attention layers after the first (perceiver) / in total (transformer)
    num_heads: int = 8  # heads of the self-attention layers
    cross_heads: int = 8  # heads of the perceiver's first cross-attention (selection heads)
    cross_qk_dim: int = 256  # perceiver: q/k width of the first cross-attention
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    decoder_dim: int = 512  # decoder query width
    decoder_heads: int = 8
    tie_decoder_positions: bool = False  # decoder queries reuse the encoder's position table
    tie_output_embedding: bool = False  # discrete: output logits reuse the input embedding
    decoder_mask_vector: bool = True  # learned vector added to every decoder query
    standardize_targets: bool = False  # continuous: MSE on per-sample standardized targets
    activation_checkpointing: bool = False


@dataclass
class MaskingConfig:
    """Mask selection (the SMA paper)."""

    mode: str = "guided"  # guided | random | span | word | patch
    ratio: float = 0.15
    num_per_query: float = 4.0
    head_aggregation: str = "mean"  # mean | random_mix
    mask_self: bool = False
    select_initial_ratio: float = 0.0  # r0 of the random -> guided curriculum
    curriculum_fraction: float = 0.0  # share of max_steps over which the cosine runs
    span_length: float = 3.0  # span baseline: mean span length
    # What layer 1's selection scores see: "content" (the paper: keys of token + position embeddings) or
    # "position" (keys, and the token queries, of the position embeddings alone, so the choice cannot
    # depend on what the tokens are; the encoder's own attention is unchanged). README "Mask diagnostics".
    selection_keys: str = "content"
    patch_grid: list[int] = field(default_factory=list)  # patch baseline: image [H, W] (H * W = model.max_len)
    patch_size: int = 16  # patch baseline: side of the square patches


@dataclass
class DataConfig:
    """Where batches come from. ``format: builtin`` uses the small corpus shipped in the repo."""

    format: str = "builtin"  # builtin | mds | wds
    train_url: str = ""
    eval_url: str = ""
    builtin: str = "text"  # builtin corpus: text | protein | higgs | smiles
    cache_dir: str = ""  # local cache for streamed shards (default: <run_dir>/cache)
    micro_batch_size: int = 8  # per rank; with optim.global_batch_size set, the largest allowed
    num_workers: int = 0
    shuffle: bool = True
    shuffle_buffer: int = 1000  # wds only
    endpoint_url: str = ""  # S3 endpoint (default: S3_ENDPOINT_URL / AWS_ENDPOINT_URL from the environment)
    validate_hash: bool = False  # check each shard before first use: mds sha1 / wds sha256 from the index


@dataclass
class OptimConfig:
    """AdamW with decoupled weight decay, warmup + cosine schedule."""

    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_steps: int = 100
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0  # max global grad norm; 0: no clipping
    grad_accum: int = 1  # micro-batches per optimizer step (ignored when global_batch_size is set)
    global_batch_size: int = 0  # samples per optimizer step over all ranks (any world size dividing it);
    #                             0: micro * accum * world
    optimizer: str = "torch_adamw"  # torch_adamw (no C++ build) | deepspeed_adamw (fused kernel)
    offload_optimizer: bool = False  # ZeRO-Offload: optimizer states and step on the CPU (ZeRO 1-3)


@dataclass
class TaskConfig:
    """Fine-tuning data: a benchmark read from the files its publisher distributes, or the user's own
    labelled file (``name: table``). Used by ``train/finetune.py`` only."""

    name: str = "table"  # a benchmark of sma.finetune.tasks (higgs, bbbp, mnli, ...) or table
    path: str = ""  # the benchmark's file or folder, or the user's file (local path or fsspec URL)
    valid_path: str = ""  # table: a separate validation file (split: file)
    test_path: str = ""  # table: a separate test file (split: file)
    file_format: str = "auto"  # table: auto (by suffix) | csv | tsv | jsonl | parquet
    input_column: str = ""  # table: the column read as bytes (text, protein, SMILES)
    pair_column: str = ""  # table: a second bytes column, encoded as A [SEP] B [SEP]
    feature_columns: list[str] = field(default_factory=list)  # table: numeric columns as continuous tokens
    label_columns: list[str] = field(default_factory=list)  # table: one or more label columns
    kind: str = ""  # table: classification | binary (one or more 0/1 labels) | regression
    smiles: bool = False  # table: the input column holds SMILES (validated with RDKit; scaffold splits)
    split: str = ""  # "": the task's default | random | scaffold | scaffold_balanced | column | file
    split_column: str = ""  # split: column, with values train / valid / test
    fractions: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])  # random / scaffold splits
    split_seed: int = 0  # random and scaffold_balanced splits, label subsets
    train_labels: int = 0  # HIGGS: a seeded subset of this many labelled training rows (0: all)
    test_split: str = ""  # which held-out file is the test split (TAPE holdouts, MNLI matched/mismatched)
    max_rows: int = 0  # read at most this many rows per file (0: all), for quick runs


@dataclass
class FinetuneConfig:
    """How to fine-tune: mode, epochs, selection on the validation split, the lr x seed sweep."""

    mode: str = "full"  # full | linear_probe (frozen encoder, only the head trains)
    epochs: int = 10
    patience: int = 0  # stop after this many epochs without a better validation metric (0: never)
    lrs: list[float] = field(default_factory=list)  # sweep; empty: [optim.lr]
    seeds: list[int] = field(default_factory=list)  # sweep; empty: [seed]
    layer_decay: float = 1.0  # layer-wise lr decay (1.0: none); the head gets the full lr
    eval_batch_size: int = 0  # 0: data.micro_batch_size


@dataclass
class TrainConfig:
    """The whole run: model, masking, data, optimization, and the run keys at the root."""

    model: ModelConfig = field(default_factory=ModelConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run_dir: str = "runs/default"
    max_steps: int = 1000
    checkpoint_every: int = 500
    keep_last: int = 3
    resume: str = ""  # "" | auto | PATH
    zero_stage: int = 0
    precision: str = "fp32"  # fp32 | bf16 | fp16
    seed: int = 0
    eval_every: int = 0  # 0: never
    eval_batches: int = 4
    log_every: int = 10
    wandb_mode: str = "offline"  # offline | online | disabled
    wandb_project: str = "sma"
    # Fine-tuning only (train/finetune.py): the starting weights and the task.
    init: str = ""  # a checkpoints folder, one stepNNNNNNNN folder, an exported .pt, or none (from scratch)
    task: TaskConfig = field(default_factory=TaskConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)


_CHOICES: dict[str, tuple[str, ...]] = {
    "model.modality": ("bytes", "continuous"),
    "model.encoder": ("perceiver", "transformer"),
    "masking.mode": ("guided", "random", "span", "word", "patch"),
    "masking.head_aggregation": ("mean", "random_mix"),
    "masking.selection_keys": ("content", "position"),
    "data.format": ("builtin", "mds", "wds"),
    "data.builtin": ("text", "protein", "higgs", "smiles"),
    "optim.optimizer": ("torch_adamw", "deepspeed_adamw"),
    "precision": ("fp32", "bf16", "fp16"),
    "wandb_mode": ("offline", "online", "disabled"),
    "finetune.mode": ("full", "linear_probe"),
}


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def validate_model(model: ModelConfig, masking: MaskingConfig | None = None, prefix: str = "") -> None:
    """Check model (and masking) settings for consistency; raise ``ConfigError`` naming the key."""

    def need(ok: bool, key: str, msg: str) -> None:
        if not ok:
            raise ConfigError(f"{prefix}{key}: {msg}")

    for key in ("max_len", "d_embed", "num_layers", "num_heads", "decoder_dim", "decoder_heads", "d_raw"):
        need(getattr(model, key) >= 1, f"model.{key}", f"must be >= 1, got {getattr(model, key)}")
    need(model.num_layers >= 1, "model.num_layers", "must be >= 1")
    need(0.0 <= model.dropout < 1.0, "model.dropout", f"must lie in [0, 1), got {model.dropout}")
    need(model.decoder_dim % model.decoder_heads == 0, "model.decoder_heads",
         f"decoder_dim={model.decoder_dim} is not divisible by decoder_heads={model.decoder_heads}")
    if model.encoder == "perceiver":
        need(1 <= model.num_latents <= model.max_len, "model.num_latents",
             f"must lie in [1, max_len={model.max_len}], got {model.num_latents}")
        need(model.d_latent % model.num_heads == 0, "model.num_heads",
             f"d_latent={model.d_latent} is not divisible by num_heads={model.num_heads}")
        need(model.cross_qk_dim % model.cross_heads == 0, "model.cross_heads",
             f"cross_qk_dim={model.cross_qk_dim} is not divisible by cross_heads={model.cross_heads}")
    else:
        need(model.d_embed % model.num_heads == 0, "model.num_heads",
             f"d_embed={model.d_embed} is not divisible by num_heads={model.num_heads}")
    if model.tie_decoder_positions:
        need(model.decoder_dim == model.d_embed, "model.tie_decoder_positions",
             "needs decoder_dim == d_embed")
    if model.tie_output_embedding:
        need(model.modality == "bytes", "model.tie_output_embedding", "only applies to modality=bytes")
    if masking is not None:
        need(0.0 < masking.ratio < 1.0, "masking.ratio", f"must lie in (0, 1), got {masking.ratio}")
        need(masking.num_per_query > 0, "masking.num_per_query", f"must be > 0, got {masking.num_per_query}")
        need(0.0 <= masking.select_initial_ratio <= 1.0, "masking.select_initial_ratio",
             f"must lie in [0, 1], got {masking.select_initial_ratio}")
        need(0.0 <= masking.curriculum_fraction <= 1.0, "masking.curriculum_fraction",
             f"must lie in [0, 1], got {masking.curriculum_fraction}")
        if masking.mask_self:
            need(model.encoder == "transformer", "masking.mask_self",
                 "only applies to the self-attention (transformer) encoder")
        if masking.mode in ("span", "word"):
            need(model.modality == "bytes" or masking.mode == "span", "masking.mode",
                 "word masking needs modality=bytes")
        if masking.mode == "patch":
            grid = list(masking.patch_grid)
            need(len(grid) == 2 and min(grid) >= 1, "masking.patch_grid",
                 f"the patch baseline needs the image grid [H, W], got {grid}")
            need(grid[0] * grid[1] == model.max_len, "masking.patch_grid",
                 f"{grid} has {grid[0] * grid[1]} pixels, model.max_len is {model.max_len}; they must be equal")
            need(1 <= masking.patch_size <= min(grid), "masking.patch_size",
                 f"must lie in [1, {min(grid)}] for the grid {grid}, got {masking.patch_size}")


def validate(cfg: TrainConfig) -> None:
    """Check choices, ranges and cross-field consistency; raise ``ConfigError`` naming the key."""
    for key, choices in _CHOICES.items():
        value = _get(cfg, key)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(choices)}")
    validate_model(cfg.model, cfg.masking)

    def need(ok: bool, key: str, msg: str) -> None:
        if not ok:
            raise ConfigError(f"{key}: {msg}")

    need(cfg.max_steps >= 1, "max_steps", f"must be >= 1, got {cfg.max_steps}")
    need(cfg.checkpoint_every >= 0, "checkpoint_every", "must be >= 0 (0: only at the end)")
    need(cfg.keep_last >= 1, "keep_last", "must be >= 1")
    need(cfg.zero_stage in (0, 1, 2, 3), "zero_stage", f"must be 0, 1, 2 or 3, got {cfg.zero_stage}")
    need(cfg.optim.lr > 0, "optim.lr", f"must be > 0, got {cfg.optim.lr}")
    need(cfg.optim.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
    need(len(cfg.optim.betas) == 2 and all(0 <= b < 1 for b in cfg.optim.betas), "optim.betas",
         f"must be two numbers in [0, 1), got {list(cfg.optim.betas)}")
    need(cfg.optim.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
    need(0 <= cfg.optim.min_lr_ratio <= 1, "optim.min_lr_ratio", "must lie in [0, 1]")
    need(cfg.optim.grad_accum >= 1, "optim.grad_accum", "must be >= 1")
    need(cfg.optim.grad_clip >= 0, "optim.grad_clip", "must be >= 0 (0: no clipping)")
    need(cfg.data.micro_batch_size >= 1, "data.micro_batch_size", "must be >= 1")
    need(cfg.data.num_workers >= 0, "data.num_workers", "must be >= 0")
    need(cfg.data.shuffle_buffer >= 1, "data.shuffle_buffer", "must be >= 1")
    if cfg.data.format != "builtin":
        need(bool(cfg.data.train_url), "data.train_url", f"is required for data.format={cfg.data.format}")
    if cfg.data.builtin == "higgs" and cfg.data.format == "builtin":
        need(cfg.model.modality == "continuous", "model.modality", "the builtin higgs data is continuous")
    need(cfg.optim.global_batch_size >= 0, "optim.global_batch_size", "must be >= 0 (0: micro * accum * world)")
    need(cfg.log_every >= 1, "log_every", f"must be >= 1, got {cfg.log_every}")
    need(cfg.eval_every >= 0, "eval_every", "must be >= 0 (0: never)")
    need(cfg.eval_batches >= 1, "eval_batches", "must be >= 1")
    if cfg.eval_every and cfg.data.format != "builtin":
        need(bool(cfg.data.eval_url), "data.eval_url", "is required to evaluate (eval_every > 0) from shards")
    if cfg.optim.offload_optimizer:
        # ZeRO-Offload moves the optimizer's *partitions* to the CPU: stage 0 has none, and the CPU step
        # is DeepSpeed's own CPU Adam, which a torch optimizer cannot stand in for.
        need(cfg.zero_stage >= 1, "optim.offload_optimizer", "needs zero_stage 1, 2 or 3")
        need(cfg.optim.optimizer == "deepspeed_adamw", "optim.offload_optimizer",
             "needs optim.optimizer=deepspeed_adamw (ZeRO-Offload steps with DeepSpeed's CPU Adam)")
    ft = cfg.finetune
    need(ft.epochs >= 1, "finetune.epochs", f"must be >= 1, got {ft.epochs}")
    need(ft.patience >= 0, "finetune.patience", "must be >= 0 (0: no early stopping)")
    need(0 < ft.layer_decay <= 1, "finetune.layer_decay", f"must lie in (0, 1], got {ft.layer_decay}")
    need(all(lr > 0 for lr in ft.lrs), "finetune.lrs", f"learning rates must be > 0, got {list(ft.lrs)}")
    need(ft.eval_batch_size >= 0, "finetune.eval_batch_size", "must be >= 0 (0: data.micro_batch_size)")
    if cfg.zero_stage == 3 and cfg.optim.optimizer not in ("torch_adamw", "deepspeed_adamw"):
        raise ConfigError("optim.optimizer: ZeRO stage 3 cannot shard this optimizer")


def _read_yaml(path: Path) -> Any:
    """One YAML file as an omegaconf mapping; syntax errors name the file, line and column."""
    import yaml

    try:
        layer = OmegaConf.load(path)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from None
    except OSError as e:  # omegaconf's word for a top level that is a scalar
        raise ConfigError(f"{path}: the top level must be a mapping of keys (model:, data:, ...), got "
                          f"{str(e).rsplit(': ', 1)[-1]}") from None
    if not isinstance(layer, DictConfig):
        raise ConfigError(f"{path}: the top level must be a mapping of keys (model:, data:, ...), got a list")
    return layer


def _yaml_layers(path: Path, seen: tuple[Path, ...] = ()) -> list[Any]:
    """The YAML at ``path`` preceded by the chain of files it ``extends`` (a path relative to it), so a
    baseline config states only what differs from the recipe it extends."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise ConfigError(f"extends: {path} extends itself (through {', '.join(map(str, seen))})")
    layer = _read_yaml(path)
    parent = layer.pop("extends", None)
    if parent is None:
        return [layer]
    if not isinstance(parent, str):
        raise ConfigError(f"extends: must be a path to a YAML file, got {parent!r} (in {path})")
    return _yaml_layers(path.parent / parent, seen + (path.resolve(),)) + [layer]


def _merge(schema: Any, layer: Any, where: str) -> Any:
    try:
        return OmegaConf.merge(schema, layer)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raise ConfigError(f"{key}: {str(e).splitlines()[0]} ({where})") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                require_model: bool = True) -> TrainConfig:
    """Load ``path`` (YAML) onto the schema, apply ``key=value`` overrides, validate.

    Unknown keys and wrong types raise ``ConfigError`` naming the key and where it came from (the file,
    or the command line). With ``require_model``, a file chain with no ``model`` section is refused: the
    schema's defaults are the paper's 217M-parameter text model, which nobody should get by accident
    (fine-tuning takes the model from its ``init`` checkpoint instead).
    """
    schema = OmegaConf.structured(TrainConfig)
    if path is not None:
        layers = _yaml_layers(Path(path))
        if require_model and not any(layer.get("model") for layer in layers):
            raise ConfigError(f"model: {path} has no model section (or an empty one); state the model's sizes "
                              "(see configs/ for the recipes), or extend a recipe with `extends: <file>.yaml`")
        for layer in layers:
            schema = _merge(schema, layer, f"in {path}")
    for override in overrides or []:
        if "=" not in override:
            raise ConfigError(f"override {override!r} is not of the form key=value")
        schema = _merge(schema, OmegaConf.from_dotlist([override]), f"command-line override {override!r}")
    try:
        cfg: TrainConfig = OmegaConf.to_object(schema)  # type: ignore[assignment]
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raise ConfigError(f"{key}: {str(e).splitlines()[0]} (in {path or '<defaults>'})") from None
    validate(cfg)
    return cfg


def to_yaml(cfg: TrainConfig) -> str:
    """The resolved config as YAML, as saved in the run directory."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_from_dict(d: dict[str, Any]) -> TrainConfig:
    """Rebuild a validated ``TrainConfig`` from ``to_dict``'s output (as stored in exported weights)."""
    try:
        cfg: TrainConfig = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig), d))  # type: ignore[assignment]
    except OmegaConfBaseException as e:
        raise ConfigError(f"{getattr(e, 'full_key', None) or '?'}: {str(e).splitlines()[0]} (stored config)") from None
    validate(cfg)
    return cfg


def model_config_from_dict(d: dict[str, Any]) -> ModelConfig:
    """Rebuild a ``ModelConfig`` from a plain dict (as stored in checkpoints), ignoring unknown keys
    so checkpoints from older versions still load."""
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    return ModelConfig(**{k: v for k, v in d.items() if k in names})


def explicit_model_keys(path: str | Path | None, overrides: list[str] | None = None) -> dict[str, Any]:
    """The ``model`` keys that the file chain at ``path`` and the overrides state themselves (not the
    schema's defaults), as a plain dict."""
    merged = OmegaConf.create()
    for layer in _yaml_layers(Path(path)) if path is not None else []:
        merged = OmegaConf.merge(merged, layer)
    merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([o for o in overrides or [] if o.startswith("model.")]))
    model = OmegaConf.to_container(merged).get("model") or {}
    return dict(model)
