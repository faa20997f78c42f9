"""Parameter models shared by the flows. They validate ``itm run --params FILE`` and render as the
Prefect UI's run forms (names, defaults, descriptions)."""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import Field, TypeAdapter, ValidationError, field_validator, model_validator

from itm_core.contract.datasets import DatasetParams
from itm_core.contract.params import ComponentParams, Params, component, problems
from itm_core.encode.embed import EncodeOptions
from itm_core.models.captioning import CaptioningOptions
from itm_core.models.head_training import HeadTraining, ITMOptions
from itm_core.models.search_index import IndexSettings
from itm_core.models.text_to_image import CVAEOptions, ModelName, TextToImageOptions
from itm_core.models.training import ContrastiveTraining, RecallKey
from itm_core.ops.promotion import PromotionOptions
from itm_core.ops.scorers import MatcherRef


class ExecutorParams(Params):
    """Where encoding runs: in the flow's own process, or as Prefect tasks on a Dask cluster."""

    kind: Literal["local", "dask"] = Field(
        "local",
        description="`local`: in the flow's process; `dask`: encoding shards as Prefect tasks on a Dask cluster "
        "(prefect-dask)",
    )
    address: str | None = Field(
        None,
        description="dask: scheduler address of an existing cluster, e.g. tcp://10.0.0.5:8786 (default: a temporary "
        "LocalCluster)",
    )
    n_workers: int = Field(2, ge=1, description="dask without address: worker processes of the temporary LocalCluster")
    threads_per_worker: int = Field(
        1, ge=1, description="dask without address: threads per worker (torch threads per worker too)"
    )
    shard_images: int = Field(
        1024, ge=1, description="dask: images per Prefect task (one shard of the embedding cache)"
    )


class EncodingParams(EncodeOptions):
    """How tower features are computed: batches, loader processes, compiled inference, the cache, and
    where encoding runs."""

    float16: bool = Field(False, description="Store cached features at half precision (half the disk and page cache)")
    executor: ExecutorParams = Field(default_factory=ExecutorParams, description="Where encoding runs")


class GenerationBenchmarkParams(Params):
    """Train every text-to-image model (or the chosen ones) on the same data, seed and time budget; score
    each on the same test prompts: r_precision, alignment, fd, kid and the attribute accuracies."""

    dataset: DatasetParams = Field(default_factory=DatasetParams)
    text_encoder: ComponentParams = Field(
        default_factory=lambda: ComponentParams(name="minilm"), json_schema_extra=component("encoder")
    )
    models: list[ModelName] = Field(
        default_factory=lambda: list(get_args(ModelName)),
        min_length=1,
        description="Text-to-image models to train and compare",
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
        json_schema_extra=component("metric", names=["attribute_accuracy"]),
    )
    distance_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Options of the fd and kid metrics (encoder, encoder_options)",
        json_schema_extra=component("metric", names=["fd", "kid"]),
    )
    real_resolution: int = Field(
        32, ge=8, le=1024, description="The real test images are scored at this side as the reference row"
    )
    captioners: list[ComponentParams] = Field(
        default_factory=list,
        json_schema_extra=component("generator"),
        description="Image-to-text generators compared on the same test images (bleu, rouge_l, cider, clipscore), e.g. "
        "trained-captioner, retrieval-captioner",
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
                TypeAdapter(TextToImageOptions).validate_python({"model": name, **options})
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
    image_encoder: ComponentParams = Field(
        default_factory=lambda: ComponentParams(name="efficientnet-lite0"), json_schema_extra=component("encoder")
    )
    text_encoder: ComponentParams = Field(
        default_factory=lambda: ComponentParams(name="minilm"), json_schema_extra=component("encoder")
    )
    training: ContrastiveTraining = Field(
        default_factory=ContrastiveTraining, description="matching: the contrastive training"
    )
    encoding: EncodingParams = Field(
        default_factory=EncodingParams, description="matching: how tower features are computed and cached"
    )
    captioning: CaptioningOptions = Field(
        default_factory=CaptioningOptions, description="captioning: the decoder and its training"
    )
    text_to_image: TextToImageOptions = Field(
        default_factory=CVAEOptions,
        description="text-to-image: the model (`model`: cvae, gan, vqvae or diffusion) and its training",
    )
    registered_model: str | None = Field(
        None,
        description="Registered model name in MLflow (default: itm-matcher, itm-captioner or itm-text-to-image by "
        "task)",
    )
    promote_metric: RecallKey = Field(
        "rsum",
        description="matching: test metric that decides whether the new model becomes `champion` (captioning uses "
        "bleu4, text-to-image r_precision)",
    )
    promotion: PromotionOptions = Field(
        default_factory=PromotionOptions, description="When the new version replaces the `champion`"
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
        default_factory=dict,
        description="Options for the generator, e.g. {'matcher': 'models:/itm-matcher@champion'}",
        json_schema_extra=component("generator", name_field="generator"),
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
        default_factory=list,
        description="Metric plugins: task 'captioning' for captions, 'text-to-image' for images",
        json_schema_extra=component("metric"),
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
        description="The image is occluded cell by cell on a grid x grid raster (occlusion without its own grid "
        "option)",
    )
    explainers: list[ComponentParams] = Field(
        default_factory=lambda: [ComponentParams(name="occlusion"), ComponentParams(name="word-deletion")],
        description="Explainer plugins, by name or {name, options}: occlusion, word-deletion, lime, shap, "
        "integrated-gradients, grad-cam",
        json_schema_extra=component("explainer"),
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
        json_schema_extra=component("explainer"),
    )
    pairs: int = Field(
        20,
        ge=1,
        le=10_000,
        description="Test pairs to explain: each image with its first caption, from the start of the split",
    )
    single_object: bool = Field(
        False,
        description="Only images with a single object (where the data says where objects are): every pair counts for "
        "pointing",
    )
    grid: int = Field(8, ge=2, le=32, description="Cells per side for the deletion and insertion curves")
    steps: int = Field(8, ge=2, le=64, description="Points on each curve")
    seed: int = Field(0, description="Seed of the random reference order")
    experiment: str = Field("itm-explain-benchmark", description="MLflow experiment")
    run_name: str | None = None

    _names = field_validator("explainers", mode="before")(_explainer_list)


class WatchParams(Params):
    """Look at datasets for new or changed data: fingerprint each, log it as a run's input, and emit
    `itm.dataset.changed` (labelled `itm.flow: watch-data`) when it differs from the previous check's."""

    datasets: list[DatasetParams] = Field(
        default_factory=lambda: [DatasetParams()], min_length=1, description="The datasets to watch"
    )
    experiment: str = Field("itm-watch", description="MLflow experiment")


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
    index: IndexSettings = Field(default_factory=IndexSettings)
    registered_model: str | None = Field(
        "itm-search", description="Register the matcher and index as this search model (empty: do not register)"
    )
    promote: bool = Field(
        True,
        description="Move the search model's `champion` alias to this version when it was built with the current "
        "matcher champion",
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


class FusionBenchmarkParams(ITMOptions):
    """Train every fusion method (or the chosen ones) on the same data, seed and budget; compare them
    on ITM, reranked retrieval, the compositional probe and VQA against plain contrastive similarity."""

    dataset: DatasetParams = Field(default_factory=DatasetParams)
    image_encoder: ComponentParams = Field(
        default_factory=lambda: ComponentParams(name="efficientnet-lite0"), json_schema_extra=component("encoder")
    )
    text_encoder: ComponentParams = Field(
        default_factory=lambda: ComponentParams(name="minilm", options={"max_length": 24}),
        json_schema_extra=component("encoder"),
    )
    fusions: list[str] = Field(
        default_factory=list,
        description="Fusion plugins to compare (empty: every registered fusion)",
        json_schema_extra=component("fusion"),
    )
    fusion_options: dict[str, dict[str, Any]] = Field(
        json_schema_extra=component("fusion", by_name=True),
        default_factory=dict,
        description="Extra options per fusion, e.g. {'bilinear': {'rank': 8}}",
    )
    dim: int = Field(256, ge=2, description="Output dimension of every fusion")
    contrastive: ContrastiveTraining = Field(
        default_factory=ContrastiveTraining,
        description="The contrastive matcher: the similarity baseline and the hard-negative miner",
    )
    itm: HeadTraining = Field(default_factory=HeadTraining, description="ITM head training")
    vqa: HeadTraining = Field(
        default_factory=lambda: HeadTraining(epochs=8, batch_size=128), description="VQA head training"
    )
    reader_fusion: str = Field(
        "mean",
        description="With the shared text reader (text_reader shared, or auto with token features): the fusion "
        "whose ITM head trains it",
        json_schema_extra=component("fusion"),
    )
    reader: HeadTraining = Field(
        default_factory=lambda: HeadTraining(patience=20),
        description="Training of the shared text reader's ITM head (it keeps its best epoch on validation)",
    )
    dataset_negatives: bool = Field(
        True,
        description="Also train ITM heads on the dataset's own hard-negative captions (swapped colours, shapes, sides) "
        "of the training images",
    )
    seed: int = Field(0)
    experiment: str = Field("itm-fusion-benchmark", description="MLflow experiment")
    run_name: str | None = None
