"""Parameter models shared by the flows. They validate ``itm run --params FILE`` and render as the
Prefect UI's run forms (names, defaults, descriptions)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from itm_core.contract.datasets import DatasetParams
from itm_core.contract.params import ComponentParams, Params, problems
from itm_core.ops.scorers import MatcherRef

RECALL_KEYS = Literal["rsum", "i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"]


class TrainingParams(Params):
    epochs: int = Field(40, ge=1, description="Maximum epochs")
    batch_size: int = Field(256, ge=2, description="Images per contrastive batch")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate (one-cycle schedule)")
    weight_decay: float = Field(0.01, ge=0)
    patience: int = Field(6, ge=1, description="Stop after this many epochs without validation improvement")
    monitor: RECALL_KEYS = Field("rsum", description="Validation metric for early stopping and the best checkpoint")
    embed_dim: int = Field(256, ge=2, description="Joint embedding dimension")
    hidden_dim: int = Field(1024, ge=0, description="Hidden width of the projection heads (0: linear heads)")
    dropout: float = Field(0.1, ge=0, lt=1)
    seed: int = Field(0, description="Seed for weights, batches and caption sampling")
    unlock: list[Literal["image", "text"]] = Field(
        default_factory=list,
        description="Towers to fine-tune with the heads (trainable encoders only, e.g. clip); locked by default",
    )
    tower_lr: float = Field(1e-5, gt=0, description="Peak learning rate of unlocked towers")
    time_limit_s: float = Field(
        0,
        ge=0,
        description="End training after the epoch that passes this many seconds (0: no limit); the best epoch so far is kept",
    )
    precision: Literal["fp32", "bf16"] = Field(
        "fp32",
        description="bf16: training steps run under bfloat16 autocast (weights, loss and validation stay float32); faster on GPUs and on CPUs with AVX512-BF16 or AMX, much slower on CPUs without them",
    )
    resume: bool = Field(
        False,
        description="Continue the last unfinished run of these same parameters from its last checkpoint (after a crash, kill or cancel)",
    )
    checkpoint_every: int = Field(
        5,
        ge=0,
        description="Also log the checkpoint to the MLflow run every this many epochs (0: never); it is written locally every epoch",
    )
    processes: int = Field(
        1,
        ge=1,
        le=256,
        description="Train data-parallel in this many processes on this machine (torch.distributed, gloo): each embeds its slice of every global batch and the loss spans the whole batch, as in one process",
    )

    @model_validator(mode="after")
    def _batch_splits(self) -> TrainingParams:
        if self.processes > self.batch_size:
            raise ValueError(
                f"training.processes ({self.processes}) is larger than training.batch_size ({self.batch_size}): "
                "every process takes a slice of each batch; use at most batch_size processes"
            )
        return self


class ExecutorParams(Params):
    """Where encoding runs: in the flow's own process, or as Prefect tasks on a Dask cluster."""

    kind: Literal["local", "dask"] = Field(
        "local",
        description="`local`: in the flow's process; `dask`: encoding shards as Prefect tasks on a Dask cluster (prefect-dask)",
    )
    address: str | None = Field(
        None,
        description="dask: scheduler address of an existing cluster, e.g. tcp://10.0.0.5:8786 (default: a temporary LocalCluster)",
    )
    n_workers: int = Field(2, ge=1, description="dask without address: worker processes of the temporary LocalCluster")
    threads_per_worker: int = Field(
        1, ge=1, description="dask without address: threads per worker (torch threads per worker too)"
    )
    shard_images: int = Field(
        1024, ge=1, description="dask: images per Prefect task (one shard of the embedding cache)"
    )


class EncodingParams(Params):
    """How tower features are computed: batches, loader processes, compiled inference, the cache."""

    batch_size: int = Field(64, ge=1, description="Images per encoder batch")
    text_batch_size: int = Field(
        256, ge=1, description="Texts per encoder batch (texts go in length order, so batches pad little)"
    )
    workers: int | None = Field(
        None,
        ge=0,
        description="Loader processes that read and decode images beside the model (empty: one per two cores; 0: none)",
    )
    compile: Literal["auto", "on", "off", "onnxruntime", "torch"] = Field(
        "auto",
        description="Run locked towers compiled: `auto` in the best runtime the encoder offers (ONNX Runtime, else torch.compile) for passes "
        "large enough to repay building it; `on` always; `onnxruntime` or `torch` that runtime; `off` eagerly",
    )
    shard_size: int = Field(2048, ge=1, description="Rows per committed cache shard (a killed run redoes at most one)")
    float16: bool = Field(False, description="Store cached features at half precision (half the disk and page cache)")
    executor: ExecutorParams = Field(default_factory=ExecutorParams, description="Where encoding runs")

    def options(self) -> Any:
        """The :class:`itm_core.encode.embed.EncodeOptions` of these parameters."""
        from itm_core.encode.embed import EncodeOptions

        return EncodeOptions(
            batch_size=self.batch_size,
            text_batch_size=self.text_batch_size,
            workers=self.workers,
            shard_size=self.shard_size,
            compile=self.compile,
        )


class CaptioningParams(Params):
    """The trained captioner: image-encoder features as a prefix to a small GPT-2 decoder trained from scratch."""

    prefix_tokens: int = Field(4, ge=1, description="Decoder input embeddings the image features are projected to")
    n_embd: int = Field(256, ge=8, description="GPT-2 width")
    n_layer: int = Field(3, ge=1, description="GPT-2 layers")
    n_head: int = Field(4, ge=1, description="GPT-2 attention heads (must divide n_embd)")
    dropout: float = Field(0.1, ge=0, lt=1)
    max_length: int = Field(24, ge=2, description="Longest caption in tokens (longer ones are cut in training)")
    epochs: int = Field(12, ge=1, description="Maximum epochs (each pass sees every caption)")
    batch_size: int = Field(64, ge=2)
    lr: float = Field(1e-3, gt=0, description="Peak learning rate (one-cycle schedule)")
    weight_decay: float = Field(0.01, ge=0)
    patience: int = Field(3, ge=1, description="Stop after this many epochs without a lower validation loss")
    num_beams: int = Field(3, ge=1, description="Beam width for the test captions and the registered model (1: greedy)")
    sample_every: int = Field(2, ge=1, description="Log captions of fixed validation images every this many epochs")
    time_limit_s: float = Field(
        840, ge=0, description="End training after the epoch that passes this many seconds (0: no limit)"
    )
    seed: int = Field(0)

    @model_validator(mode="after")
    def _heads_divide(self) -> CaptioningParams:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_head ({self.n_head}) must divide n_embd ({self.n_embd})")
        return self


class TextToImageParams(Params):
    """The trained text-to-image model, conditioned on the text encoder's features, at low resolution."""

    model: Literal["cvae", "diffusion", "gan", "vqvae"] = Field(
        "cvae",
        description="`cvae` (conditional VAE, fastest), `diffusion` (UNet2DConditionModel + DDPM/DDIM), `gan` (conditional GAN, "
        "projection discriminator, hinge loss) or `vqvae` (VQ-VAE + text-conditional transformer prior)",
    )
    resolution: int = Field(
        32, ge=8, le=128, description="Image side in pixels (a multiple of 8; gan: 16, 32, 64 or 128)"
    )
    epochs: int | None = Field(
        None,
        ge=1,
        description="Epochs, one caption per image each (default: cvae 120, diffusion 14, gan 120, vqvae 60 of which `vq_epochs` train the auto-encoder)",
    )
    batch_size: int | None = Field(None, ge=2, description="Images per step (default: 32 for cvae, 64 for the others)")
    lr: float | None = Field(None, gt=0, description="Peak learning rate (default: 2e-4 for gan, 1e-3 for the others)")
    precision: Literal["auto", "fp32", "bf16"] | None = Field(
        None,
        description="bf16: training steps' forward passes run under bfloat16 autocast (validation and sampling stay float32); auto: bf16 on a CPU "
        "with AVX512-BF16 or AMX, fp32 elsewhere (emulated bfloat16 is slower); default: auto for cvae, fp32 for the others",
    )
    cond_dim: int = Field(128, ge=8, description="Width the text features are projected to")
    channels: int | None = Field(
        None,
        ge=4,
        description="cvae, gan, vqvae: base number of convolution channels (default: 32 for gan, 64 for the others)",
    )
    latent_dim: int = Field(32, ge=2, description="cvae: latent size")
    kl_weight: float = Field(
        0.1,
        ge=0,
        description="cvae: weight of the KL term's hold on the posterior (small: z keeps more of the image, samples are sharper)",
    )
    prior_weight: float | None = Field(
        1.0,
        ge=0,
        description="cvae with the learned prior: weight of the KL term's pull on the prior (KL balancing; null: kl_weight), so a small kl_weight leaves z free without starving the prior",
    )
    align_weight: float = Field(
        0.01,
        ge=0,
        description="cvae: weight of a contrastive term that trains the text condition to pick its own image out of the batch (0: off)",
    )
    adv_weight: float = Field(
        0.0,
        ge=0,
        description="cvae: weight of an adversarial term: a projection discriminator (hinge loss, real images with the wrong text as extra fakes) judges samples drawn from the prior (0: off)",
    )
    temperature: float | None = Field(
        None,
        ge=0,
        description="cvae, gan: scale of the noise drawn when sampling (cvae: the prior's deviation; default: 0.3 cvae, 1.0 gan); below 1 trades variety for fidelity, as the truncation trick does",
    )
    cvae_prior: Literal["learned", "standard"] = Field(
        "learned",
        description="cvae: `learned`: samples draw z from a Gaussian predicted from the text (the prompt decides where and what); `standard`: from N(0, I)",
    )
    cvae_decoder: Literal["film", "deconv"] = Field(
        "film",
        description="cvae: `film`: upsampling + convolution blocks whose normalisation the text scales and shifts at every resolution; `deconv`: three transposed convolutions, the text only at the input",
    )
    text_condition: Literal["auto", "tokens", "pooled"] = Field(
        "auto",
        description="cvae, gan: `tokens`: a small transformer reads the text encoder's token features into the condition (which attribute goes "
        "with which object survives); `pooled`: the encoder's pooled sentence feature; `auto`: tokens for the cvae when the encoder gives them, "
        "pooled for the gan (which collapses on tokens)",
    )
    condition_layers: int = Field(
        2, ge=0, le=8, description="cvae, gan with tokens: transformer layers over the token features"
    )
    condition_queries: int = Field(
        4, ge=1, le=16, description="cvae, gan with tokens: learned queries that pool the tokens into the condition"
    )
    block_channels: list[int] = Field(
        default_factory=lambda: [32, 64, 64], min_length=2, description="diffusion: UNet channels per resolution level"
    )
    sample_steps: int = Field(30, ge=1, description="diffusion: DDIM steps when sampling")
    guidance_scale: float | None = Field(
        None, ge=0, description="diffusion, vqvae: classifier-free guidance scale (default: 3.0 diffusion, 2.0 vqvae)"
    )
    noise_dim: int = Field(64, ge=1, description="gan: size of the noise vector")
    mismatch_weight: float = Field(
        0.5,
        ge=0,
        le=1,
        description="gan: share of the discriminator's fake term given to real images with the wrong text",
    )
    codebook_size: int = Field(128, ge=2, description="vqvae: number of codes")
    code_stride: Literal[2, 4, 8] = Field(
        4,
        description="vqvae: each code stands for a code_stride x code_stride patch (32 px at 4: an 8x8 grid of codes)",
    )
    vq_epochs: int = Field(
        20, ge=1, description="vqvae: epochs of the auto-encoder before the prior (or a third of the time limit)"
    )
    prior_width: int = Field(256, ge=16, description="vqvae: transformer prior width")
    prior_layers: int = Field(4, ge=1, description="vqvae: transformer prior layers")
    prior_dropout: float = Field(0.2, ge=0, lt=1, description="vqvae: dropout in the transformer prior")
    top_k: int = Field(32, ge=0, description="vqvae: sample each code among the k most likely (0: all)")
    sample_every: int = Field(
        5, ge=1, description="Log a grid of generated images for fixed validation prompts every this many epochs"
    )
    time_limit_s: float = Field(
        840, ge=0, description="End training after the epoch that passes this many seconds (0: no limit)"
    )
    matcher: str = Field(
        "models:/itm-matcher@champion",
        description="The matcher that scores r_precision and alignment on the test prompts",
    )
    candidates: int = Field(
        100, ge=2, description="r_precision: the prompt is retrieved among this many candidate prompts"
    )
    test_prompts: int = Field(500, ge=1, description="Test images whose first caption is drawn and scored")
    seed: int = Field(0)

    @model_validator(mode="after")
    def _resolution(self) -> TextToImageParams:
        if self.resolution % 8:
            raise ValueError(f"resolution must be a multiple of 8, got {self.resolution}")
        if self.model == "gan" and self.resolution not in (16, 32, 64, 128):
            raise ValueError(f"gan: resolution must be 16, 32, 64 or 128, got {self.resolution}")
        if self.model == "vqvae" and self.epochs is not None and self.epochs <= self.vq_epochs:
            raise ValueError(
                f"vqvae: epochs ({self.epochs}) must be more than vq_epochs ({self.vq_epochs}), or the prior never trains"
            )
        return self


T2I_MODELS = ("cvae", "gan", "vqvae", "diffusion")


class GenerationBenchmarkParams(Params):
    """Train every text-to-image model (or the chosen ones) on the same data, seed and time budget; score
    each on the same test prompts: r_precision, alignment, fd, kid and the attribute accuracies."""

    dataset: DatasetParams = Field(default_factory=DatasetParams)
    text_encoder: ComponentParams = Field(default_factory=lambda: ComponentParams(name="minilm"))
    models: list[Literal["cvae", "gan", "vqvae", "diffusion"]] = Field(
        default_factory=lambda: list(T2I_MODELS), min_length=1, description="Text-to-image models to train and compare"
    )
    model_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Options per model (any text_to_image option of retrain), e.g. {'gan': {'channels': 48}}",
    )
    time_limit_s: float = Field(
        840,
        ge=0,
        description="The training budget of every model: training ends after the epoch that passes it (0: epochs only)",
    )
    matcher: str = Field(
        "models:/itm-matcher@champion", description="The matcher that scores r_precision and alignment"
    )
    candidates: int = Field(
        100, ge=2, description="r_precision: the prompt is retrieved among this many candidate prompts"
    )
    test_prompts: int = Field(500, ge=2, description="Test images whose first caption is drawn by every model")
    attribute_reader: dict[str, Any] | None = Field(
        default_factory=dict,
        description="Options of the attribute_accuracy metric (shapes prompts; null: leave it out, for other datasets)",
    )
    distance_options: dict[str, Any] = Field(
        default_factory=dict, description="Options of the fd and kid metrics (encoder, encoder_options)"
    )
    real_resolution: int = Field(
        32, ge=8, le=1024, description="The real test images are scored at this side as the reference row"
    )
    captioners: list[ComponentParams] = Field(
        default_factory=list,
        description="Image-to-text generators compared on the same test images (bleu, rouge_l, cider, clipscore), e.g. trained-captioner, retrieval-captioner",
    )
    seed: int = Field(0)
    experiment: str = Field("itm-generation-benchmark", description="MLflow experiment")
    run_name: str | None = None

    @model_validator(mode="after")
    def _options(self) -> GenerationBenchmarkParams:
        unknown = sorted(set(self.model_options) - set(self.models))
        if unknown:
            raise ValueError(f"model_options names {unknown}, which are not among models {self.models}")
        for name in self.models:
            options = self.model_options.get(name, {})
            if "model" in options:
                raise ValueError(f"model_options.{name}: 'model' is set by the key, leave it out")
            try:
                TextToImageParams(model=name, **options)
            except ValidationError as exc:
                raise ValueError(f"model_options.{name}: {problems(exc)}") from None
        return self


REGISTERED_MODELS = {"matching": "itm-matcher", "captioning": "itm-captioner", "text-to-image": "itm-text-to-image"}


class RetrainParams(Params):
    """Train a model, test it, register it, maybe promote it. ``task``: a matcher (projection heads over
    locked towers), a captioner (on the image encoder) or a text-to-image model (on the text encoder)."""

    task: Literal["matching", "captioning", "text-to-image"] = Field(
        "matching", description="What to train: a matcher, a captioner or a text-to-image model"
    )
    dataset: DatasetParams = Field(default_factory=DatasetParams)
    image_encoder: ComponentParams = Field(default_factory=lambda: ComponentParams(name="efficientnet-lite0"))
    text_encoder: ComponentParams = Field(default_factory=lambda: ComponentParams(name="minilm"))
    training: TrainingParams = Field(default_factory=TrainingParams, description="matching: the contrastive training")
    encoding: EncodingParams = Field(
        default_factory=EncodingParams, description="matching: how tower features are computed and cached"
    )
    captioning: CaptioningParams = Field(
        default_factory=CaptioningParams, description="captioning: the decoder and its training"
    )
    text_to_image: TextToImageParams = Field(
        default_factory=TextToImageParams, description="text-to-image: the model and its training"
    )
    registered_model: str | None = Field(
        None,
        description="Registered model name in MLflow (default: itm-matcher, itm-captioner or itm-text-to-image by task)",
    )
    promote_metric: RECALL_KEYS = Field(
        "rsum",
        description="matching: test metric that decides whether the new model becomes `champion` (captioning uses bleu4, text-to-image r_precision)",
    )
    experiment: str = Field("itm-retrain", description="MLflow experiment")
    run_name: str | None = Field(None, description="MLflow run name (default: the encoder pair)")

    @property
    def model_name(self) -> str:
        return self.registered_model or REGISTERED_MODELS[self.task]


class EvaluateParams(Params):
    """Evaluate one or several matchers on a dataset split; several give a leaderboard."""

    matchers: list[MatcherRef] = Field(
        default_factory=lambda: [MatcherRef(model_uri="models:/itm-matcher@champion")], min_length=1
    )
    dataset: DatasetParams = Field(default_factory=DatasetParams)
    split: str = Field("test", description="Split to evaluate on")
    experiment: str = Field("itm-evaluate", description="MLflow experiment")
    run_name: str | None = None


class GenerateParams(Params):
    """Caption images, or draw images for prompts, with a generator plugin; score the outputs with metric plugins."""

    generator: str = Field("retrieval-captioner", description="A registered generator")
    generator_options: dict[str, Any] = Field(
        default_factory=dict, description="Options for the generator, e.g. {'matcher': 'models:/itm-matcher@champion'}"
    )
    dataset: DatasetParams = Field(default_factory=DatasetParams)
    split: str = Field("test")
    images: list[str] = Field(default_factory=list, description="Image files to caption instead of a dataset split")
    prompts: list[str] = Field(
        default_factory=list, description="Prompts to draw instead of the split's captions (text-to-image)"
    )
    prompts_file: str | None = Field(None, description="A text file with one prompt per line (text-to-image)")
    num_images: int = Field(16, ge=1, description="How many images (or prompts) of the split")
    metrics: list[ComponentParams] = Field(
        default_factory=list, description="Metric plugins: task 'captioning' for captions, 'text-to-image' for images"
    )
    experiment: str = Field("itm-generate", description="MLflow experiment")
    run_name: str | None = None


def _explainer_list(value: Any) -> Any:
    """``"lime"`` is short for ``{"name": "lime"}``."""
    if isinstance(value, list):
        return [{"name": v} if isinstance(v, str) else v for v in value]
    return value


class ExplainParams(Params):
    """Explain a matcher's score for one image-text pair with one or more explainers (occlusion heat
    map and per-word contributions by default; lime, shap, integrated-gradients, grad-cam or a plugin's)."""

    matcher: MatcherRef = Field(
        default_factory=lambda: MatcherRef(model_uri="models:/itm-matcher@champion"),
        description="The matcher to explain",
    )
    image: str | None = Field(None, description="An image file (default: the first image of the dataset split)")
    text: str | None = Field(None, description="The text (default: the first caption of that image)")
    dataset: DatasetParams = Field(
        default_factory=DatasetParams,
        description="Where the default pair comes from, and the training captions for encoders that need fitting",
    )
    split: str = Field("test")
    grid: int = Field(
        8,
        ge=1,
        le=32,
        description="The image is occluded cell by cell on a grid x grid raster (occlusion without its own grid option)",
    )
    explainers: list[ComponentParams] = Field(
        default_factory=lambda: [ComponentParams(name="occlusion"), ComponentParams(name="word-deletion")],
        description="Explainer plugins, by name or {name, options}: occlusion, word-deletion, lime, shap, integrated-gradients, grad-cam",
    )
    experiment: str = Field("itm-explain", description="MLflow experiment")
    run_name: str | None = None

    _names = field_validator("explainers", mode="before")(_explainer_list)


class ExplainBenchmarkParams(Params):
    """Score each explainer's faithfulness on test pairs: deletion and insertion curves over image
    cells and words, pointing at the named object where the data says where it is, time per explanation."""

    matcher: MatcherRef = Field(
        default_factory=lambda: MatcherRef(model_uri="models:/itm-matcher@champion"),
        description="The matcher to explain",
    )
    dataset: DatasetParams = Field(default_factory=DatasetParams)
    split: str = Field("test")
    explainers: list[ComponentParams] = Field(
        default_factory=list,
        description="Explainers to compare, by name or {name, options} (empty: every registered one)",
    )
    pairs: int = Field(
        20,
        ge=1,
        le=10_000,
        description="Test pairs to explain: each image with its first caption, from the start of the split",
    )
    single_object: bool = Field(
        False,
        description="Only images with a single object (where the data says where objects are): every pair counts for pointing",
    )
    grid: int = Field(8, ge=2, le=32, description="Cells per side for the deletion and insertion curves")
    steps: int = Field(8, ge=2, le=64, description="Points on each curve")
    seed: int = Field(0, description="Seed of the random reference order")
    experiment: str = Field("itm-explain-benchmark", description="MLflow experiment")
    run_name: str | None = None

    _names = field_validator("explainers", mode="before")(_explainer_list)


class IndexSettingsParams(Params):
    """The FAISS index: exact below a size, a graph (HNSW) or inverted lists of compressed codes (IVF-PQ) above."""

    kind: Literal["auto", "flat", "hnsw", "ivfpq"] = Field(
        "auto", description="`auto` picks by size: flat (exact) < exact_below <= hnsw < hnsw_below <= ivfpq"
    )
    exact_below: int = Field(50_000, ge=1, description="auto: exact search (IndexFlatIP) below this many items")
    hnsw_below: int = Field(500_000, ge=1, description="auto: HNSW below this many items, IVF-PQ from here on")
    hnsw_m: int = Field(32, ge=4, description="hnsw: links per node")
    ef_construction: int = Field(128, ge=8, description="hnsw: candidate list while building")
    ef_search: int = Field(256, ge=8, description="hnsw: candidate list while searching (recall vs speed)")
    nlist: int = Field(0, ge=0, description="ivfpq: inverted lists (0: about 4 x sqrt(items))")
    pq_m: int = Field(0, ge=0, description="ivfpq: sub-quantisers, dividing the embedding size (0: about dim / 4)")
    nprobe: int = Field(64, ge=1, description="ivfpq: lists visited per query (recall vs speed)")
    refine: int = Field(20, ge=1, description="ivfpq: re-rank refine x k candidates with exact scores")

    def settings(self) -> Any:
        from itm_core.models.search_index import IndexSettings

        return IndexSettings(**self.model_dump())


class IndexParams(Params):
    """Embed every image (and optionally every caption) of a dataset with a registered matcher and
    build a FAISS index for search; logged to MLflow and registered as the `itm-search` model."""

    matcher: str = Field(
        "models:/itm-matcher@champion",
        description="The matcher whose joint space is indexed (model URI or saved folder)",
    )
    dataset: DatasetParams = Field(default_factory=DatasetParams)
    splits: list[str] = Field(default_factory=list, description="Splits to index (empty: every image of the dataset)")
    captions: bool = Field(False, description="Also index every caption, for image-to-text search")
    index: IndexSettingsParams = Field(default_factory=IndexSettingsParams)
    registered_model: str | None = Field(
        "itm-search", description="Register the matcher and index as this search model (empty: do not register)"
    )
    promote: bool = Field(
        True,
        description="Move the search model's `champion` alias to this version when it was built with the current matcher champion",
    )
    experiment: str = Field("itm-index", description="MLflow experiment")
    run_name: str | None = None


class SearchParams(Params):
    """Search an index built by `index`: the top k images for a text, or images or captions for an image."""

    text: str | None = Field("a red circle", description="The text to search images with")
    image: str | None = Field(
        None,
        description="An image file to search with instead of text (similar images, or captions with target=captions)",
    )
    k: int = Field(10, ge=1, le=1000, description="How many results")
    target: Literal["images", "captions"] = Field(
        "images", description="Search the image index or the caption index (built with captions: true)"
    )
    index: str | None = Field(
        None, description="An `index` run id or a saved index folder (default: the newest index run)"
    )
    matcher: str = Field(
        "models:/itm-matcher@champion",
        description="The matcher to embed the query with; it must be the one that built the index",
    )
    experiment: str = Field("itm-search", description="MLflow experiment")
    run_name: str | None = None


class ParamsFileError(ValueError):
    """A parameters file that cannot be read or does not validate; the message names the file and fields."""


def load_params(path: str | Path, model: type[Params]) -> Params:
    """Read a JSON or YAML file and validate it against ``model``."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ParamsFileError(f"cannot read parameters file {str(path)!r}: {exc.strerror}") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ParamsFileError(
            f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: {exc}"
        ) from None
    try:
        return model.model_validate(data or {})
    except ValidationError as exc:
        raise ParamsFileError(f"{path}: invalid {model.__name__}: {problems(exc)}") from None


class HeadTrainingParams(Params):
    epochs: int = Field(20, ge=1, description="Maximum epochs (one pass over the training images)")
    batch_size: int = Field(64, ge=2, description="Images per batch")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    patience: int = Field(5, ge=1, description="Stop after this many epochs without validation improvement")
    input_dropout: float = Field(0.3, ge=0, lt=1, description="Dropout on the standardised input features")


class FusionBenchmarkParams(Params):
    """Train every fusion method (or the chosen ones) on the same data, seed and budget; compare them
    on ITM, reranked retrieval, the compositional probe and VQA against plain contrastive similarity."""

    dataset: DatasetParams = Field(default_factory=DatasetParams)
    image_encoder: ComponentParams = Field(default_factory=lambda: ComponentParams(name="efficientnet-lite0"))
    text_encoder: ComponentParams = Field(
        default_factory=lambda: ComponentParams(name="minilm", options={"max_length": 24})
    )
    fusions: list[str] = Field(
        default_factory=list, description="Fusion plugins to compare (empty: every registered fusion)"
    )
    fusion_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Extra options per fusion, e.g. {'bilinear': {'rank': 8}}"
    )
    dim: int = Field(256, ge=2, description="Output dimension of every fusion")
    contrastive: TrainingParams = Field(
        default_factory=TrainingParams,
        description="The contrastive matcher: the similarity baseline and the hard-negative miner",
    )
    itm: HeadTrainingParams = Field(default_factory=HeadTrainingParams, description="ITM head training")
    vqa: HeadTrainingParams = Field(
        default_factory=lambda: HeadTrainingParams(epochs=8, batch_size=128), description="VQA head training"
    )
    hard_pool: int = Field(
        16, ge=1, description="Hard negatives are sampled from each item's this many most similar non-matches"
    )
    dataset_negatives: bool = Field(
        True,
        description="Also train ITM heads on the dataset's own hard-negative captions (swapped colours, shapes, sides) of the training images",
    )
    rerank_k: int = Field(
        16,
        ge=1,
        description="The ITM head reranks at most the contrastive top k (k and the contrastive weight are chosen on validation)",
    )
    in_batch_negatives: bool = Field(
        True,
        description="Also train ITM heads on a negative caption and image per pair drawn from the batch by contrastive similarity (ALBEF)",
    )
    listwise: int = Field(
        0,
        ge=0,
        description="Also train ITM heads on the reranking task itself: a softmax over each query's match and this many of its "
        "hard_pool mined negatives, in both directions (0: off; at most hard_pool)",
    )
    itm_select: Literal["rerank+probe", "rerank", "probe", "auc"] = Field(
        "rerank+probe",
        description="Validation score that picks each ITM head's best epoch: reranked R@1 (mean of both directions), probe accuracy, their sum, or ITM AUC",
    )
    text_reader: Literal["auto", "tokens", "pooled"] = Field(
        "auto",
        description="What fusions of pooled features (all but cross-attention) get of each text: `tokens`: the text encoder's pooled feature and its "
        "token features read into one vector by a small transformer with attention pooling, trained with the head (which word goes "
        "with which object survives); `pooled`: the pooled feature alone; `auto`: tokens when the text encoder gives them",
    )
    seed: int = Field(0)
    experiment: str = Field("itm-fusion-benchmark", description="MLflow experiment")
    run_name: str | None = None

    @model_validator(mode="after")
    def _listwise_within_the_pool(self) -> FusionBenchmarkParams:
        if self.listwise > self.hard_pool:
            raise ValueError(
                f"listwise ({self.listwise}) draws from each query's hard_pool mined negatives, so it can be at most hard_pool ({self.hard_pool})"
            )
        return self
