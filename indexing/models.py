from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _


class IndexEngine(models.TextChoices):
    V2 = "v2", _("V2 (catalog database)")
    V1 = "v1", _("V1 (legacy folder)")


class GalleryType(models.TextChoices):
    DEFECT = "defect", _("Defect images")
    NORMAL = "normal", _("Normal images")


class BuildStatus(models.TextChoices):
    QUEUED = "queued", _("Queued")
    RUNNING = "running", _("Running")
    READY = "ready", _("Ready")
    FAILED = "failed", _("Failed")


PENDING_STATUSES = [BuildStatus.QUEUED, BuildStatus.RUNNING]


class IndexBuild(models.Model):
    image_type = models.CharField(_("image type"), max_length=16, choices=GalleryType.choices, db_index=True)
    engine = models.CharField(_("engine"), max_length=4, choices=IndexEngine.choices, default=IndexEngine.V2)
    status = models.CharField(
        _("status"), max_length=16, choices=BuildStatus.choices, default=BuildStatus.QUEUED, db_index=True
    )
    progress_done = models.PositiveIntegerField(_("progress done"), default=0)
    progress_total = models.PositiveIntegerField(_("progress total"), default=0)
    vector_count = models.PositiveIntegerField(_("vector count"), default=0)
    embedded_count = models.PositiveIntegerField(
        _("embedded count"), default=0, help_text=_("Images embedded by this build.")
    )
    reused_count = models.PositiveIntegerField(
        _("reused count"), default=0, help_text=_("Embeddings reused from earlier builds.")
    )
    missing_count = models.PositiveIntegerField(
        _("missing count"), default=0, help_text=_("Catalog images whose file was not in storage.")
    )
    model_name = models.CharField(_("model name"), max_length=100)
    pretrained = models.CharField(_("pretrained weights"), max_length=500)
    is_untrained = models.BooleanField(
        _("untrained"), default=False, help_text=_("Random weights: similarity is not meaningful.")
    )
    model_fingerprint = models.CharField(_("model fingerprint"), max_length=64, blank=True)
    adapt = models.BooleanField(
        _("catalog adaptation"),
        default=False,
        help_text=_(
            "Asked to learn a projection of the embeddings from the catalog's labels; the build keeps it only "
            "when it helps on held-out pictures."
        ),
    )
    artifact_prefix = models.CharField(_("artifact prefix"), max_length=300, blank=True)
    manifest_sha256 = models.CharField(_("manifest SHA-256"), max_length=64, blank=True)
    timings = models.JSONField(_("timings"), default=dict, blank=True)
    # Written once with the build (also in its manifest); the shape is indexing.quality's report.
    quality = models.JSONField(
        _("retrieval quality"),
        null=True,
        blank=True,
        help_text=_("Leave-one-out figures over the build's own vectors; empty for builds not measured."),
    )
    error = models.TextField(_("error"), blank=True)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, verbose_name=_("requested by")
    )
    task_id = models.CharField(_("task id"), max_length=64, blank=True)
    worker = models.CharField(
        _("worker"), max_length=200, blank=True, help_text=_("host:pid of the process running the build.")
    )
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    started_at = models.DateTimeField(_("started at"), null=True, blank=True)
    heartbeat_at = models.DateTimeField(_("heartbeat at"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished at"), null=True, blank=True)
    activated_at = models.DateTimeField(_("activated at"), null=True, blank=True)
    is_active = models.BooleanField(_("active"), default=False, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = _("index build")
        verbose_name_plural = _("index builds")
        # Checked by the API and the admin alike (simsearch_project.permissions).
        permissions = [
            ("rebuild_index", "Can request index rebuilds"),
            ("activate_indexbuild", "Can activate/roll back index builds"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["image_type", "engine"],
                condition=Q(is_active=True),
                name="one_active_build_per_type_and_engine",
            ),
            models.UniqueConstraint(
                fields=["image_type", "engine"],
                condition=Q(status__in=PENDING_STATUSES),
                name="one_pending_build_per_type_and_engine",
            ),
            models.CheckConstraint(
                condition=Q(is_active=False) | Q(status=BuildStatus.READY),
                name="only_ready_builds_are_active",
            ),
        ]

    def __str__(self) -> str:
        return gettext("Build %(id)s (%(engine)s %(image_type)s, %(status)s)") % {
            "id": self.pk,
            "engine": self.engine,
            "image_type": self.image_type,
            "status": self.status,
        }

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None:
            return None
        from django.utils import timezone

        return ((self.finished_at or timezone.now()) - self.started_at).total_seconds()


class ChunkStatus(models.TextChoices):
    PENDING = "pending", _("Pending")
    RUNNING = "running", _("Running")
    DONE = "done", _("Done")
    FAILED = "failed", _("Failed")


class BuildChunk(models.Model):
    """A share of a build's images to embed, taken by whichever task-queue worker claims it first
    (the build's own task too): more qcluster processes on the broker, faster rebuilds. The
    vectors go to the embedding cache; the build merges them from there. Deleted with the build."""

    build = models.ForeignKey(IndexBuild, on_delete=models.CASCADE, related_name="chunks")
    number = models.PositiveIntegerField()
    # [[image_id, sha256, "storage"|"file", name or path], ...]: what to read, in any process.
    sources = models.JSONField()
    status = models.CharField(max_length=16, choices=ChunkStatus.choices, default=ChunkStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    done = models.PositiveIntegerField(default=0)
    missing_ids = models.JSONField(default=list, blank=True)
    worker = models.CharField(max_length=200, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["build", "number"]
        constraints = [models.UniqueConstraint(fields=["build", "number"], name="one_chunk_number_per_build")]

    def __str__(self) -> str:
        return f"chunk {self.number} of build {self.build_id} ({self.status})"


class CachedEmbedding(models.Model):
    """An image embedding, reusable by any later build with the same model fingerprint."""

    sha256 = models.CharField(max_length=64)
    model_fingerprint = models.CharField(max_length=64)
    vector = models.BinaryField(help_text="float32, L2-normalised")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["model_fingerprint", "sha256"], name="one_embedding_per_image_and_model")
        ]

    def __str__(self) -> str:
        return f"Embedding of {self.sha256[:12]} ({self.model_fingerprint[:12]})"


class ProductAnomalyModel(models.Model):
    """One product's anomaly model (patch memory bank + calibrated threshold), an artifact of a
    normal-index build: activated, rolled back and pruned with it. The file lives under the
    build's artifact prefix; its sha256 is also in the build's manifest, which the database pins."""

    build = models.ForeignKey(
        IndexBuild, on_delete=models.CASCADE, related_name="anomaly_models", verbose_name=_("index build")
    )
    product = models.ForeignKey(
        "catalog.Product", on_delete=models.CASCADE, related_name="anomaly_models", verbose_name=_("product")
    )
    file_name = models.CharField(_("file name"), max_length=200)
    sha256 = models.CharField(_("SHA-256"), max_length=64)
    size_bytes = models.PositiveBigIntegerField(_("size (bytes)"), default=0)
    normal_count = models.PositiveIntegerField(_("normal images"), default=0)
    bank_size = models.PositiveIntegerField(_("memory bank patches"), default=0)
    threshold = models.FloatField(_("calibrated threshold"))
    image_auroc = models.FloatField(
        _("image AUROC"),
        null=True,
        blank=True,
        help_text=_(
            "The product's defect images against its normal images (leave-one-out), measured just after the "
            "build goes live; empty without defects."
        ),
    )
    defect_count = models.PositiveIntegerField(_("defect images evaluated"), default=0)
    normal_set_sha256 = models.CharField(
        _("normal set SHA-256"),
        max_length=64,
        help_text=_(
            "Hash of the normal images, the feature model and the fitting method: equal means the next build "
            "reuses this model."
        ),
    )
    eval_set_sha256 = models.CharField(_("evaluation set SHA-256"), max_length=64, blank=True)
    reused_from = models.ForeignKey(
        IndexBuild,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        verbose_name=_("reused from build"),
    )
    fit_seconds = models.FloatField(_("fit time (s)"), default=0.0)

    class Meta:
        ordering = ["build", "product"]
        verbose_name = _("product anomaly model")
        verbose_name_plural = _("product anomaly models")
        constraints = [models.UniqueConstraint(fields=["build", "product"], name="one_anomaly_model_per_build")]

    def __str__(self) -> str:
        return f"{self.product_id} @ build {self.build_id}"
