"""The indexes a serving process answers from, loaded lazily and swapped without locks on the
read path: a newly activated build is loaded beside the old one, then one reference is
replaced, so requests in flight finish on the build they started with."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection

from catalog.storage import read_object
from indexing import artifact_store
from indexing.anomaly import AnomalyModel
from indexing.artifacts import ArtifactError, LoadedIndex, sha256_hex, unpack_artifacts
from indexing.focus import FocusDescriptors
from indexing.models import GalleryType, IndexEngine
from indexing.selectors import ActiveBuild, active_builds, build_artifact_prefix, builds_existing
from simsearch_project.errors import safe_reason

logger = logging.getLogger(__name__)

Key = tuple[str, str]  # (engine, image_type)


@dataclass
class CacheState:
    loaded: dict[Key, LoadedIndex] = field(default_factory=dict)
    degraded: str = ""  # why the process serves from its local cache only, if it does
    load_errors: dict[Key, str] = field(default_factory=dict)


class IndexCache:
    def __init__(self) -> None:
        self._state = CacheState()
        self._checked_at = float("-inf")
        self._refresh_lock = threading.Lock()
        self._started = False
        self._anomaly_models: dict[tuple[int, str], AnomalyModel] = {}
        self._focus: dict[int, FocusDescriptors] = {}

    # -- read path --------------------------------------------------------------------------

    def get(self, *, engine: str, image_type: str) -> LoadedIndex | None:
        self.refresh_if_due()
        return self._state.loaded.get((engine, image_type))

    def state(self) -> CacheState:
        self.refresh_if_due()
        return self._state

    def refresh_if_due(self) -> None:
        if time.monotonic() - self._checked_at < settings.SIMSEARCH_INDEX_POLL_SECONDS:
            return
        # One thread refreshes; the others keep answering from the current state meanwhile,
        # unless nothing is loaded yet (then they wait for the first load).
        blocking = not self._state.loaded
        if self._refresh_lock.acquire(blocking=blocking):
            try:
                if time.monotonic() - self._checked_at >= settings.SIMSEARCH_INDEX_POLL_SECONDS:
                    self.refresh()
            finally:
                self._refresh_lock.release()

    # -- loading ----------------------------------------------------------------------------

    def refresh(self) -> None:
        try:
            self._refresh()
        finally:
            # Only now: a thread that finds the check fresh answers from the state at once, so
            # until the first load is published the others must find it due and wait for the lock.
            self._checked_at = time.monotonic()

    def _refresh(self) -> None:
        if not self._started:
            self._started = True
            self._on_first_start()
        try:
            active = active_builds()
        except DatabaseError as exc:
            self._database_down(exc)
            return
        state = CacheState(loaded=dict(self._state.loaded))
        swapped = False
        for key, build in active.items():
            current = state.loaded.get(key)
            if current is not None and current.build_id == build.build_id:
                continue
            try:
                state.loaded[key] = self._load(key, build)
                swapped = True
                logger.info("Serving %s %s index from build %s", *key, build.build_id)
            except Exception as exc:  # keep serving the previous build
                logger.exception("Could not load build %s for %s %s", build.build_id, *key)
                state.load_errors[key] = f"build {build.build_id}: {safe_reason(exc)}"
        self._state = state
        if swapped:
            self._forget_pruned_builds()

    def _forget_pruned_builds(self) -> None:
        """Drop local copies of builds whose row is gone (pruned): nothing will load them again."""
        try:
            cached = artifact_store.cache_build_ids()
            keep = builds_existing(cached) | artifact_store.cache_pointed_ids()
            for build_id in set(cached) - keep:
                artifact_store.cache_remove(build_id)
                logger.info("Removed the local copy of pruned build %s", build_id)
        except Exception:  # housekeeping only; serving goes on
            logger.exception("Could not clean the local index cache")

    def _load(self, key: Key, build: ActiveBuild) -> LoadedIndex:
        """The build from the local cache, copied there from storage first if need be. Served
        from the cache folder, its index and records are memory-mapped: the processes of a host
        share one copy in the page cache."""
        files = artifact_store.cache_get(build.build_id)
        loaded = None
        if files is not None:
            try:
                loaded = unpack_artifacts(files, manifest_sha256=build.manifest_sha256)
            except ArtifactError:
                logger.warning("Local copy of build %s is damaged; reading it from storage again", build.build_id)
                artifact_store.cache_remove(build.build_id)
        if loaded is None:
            files = artifact_store.cache_fill(build.build_id, build.artifact_prefix)
            try:
                loaded = unpack_artifacts(files, manifest_sha256=build.manifest_sha256)
            except ArtifactError:
                artifact_store.cache_remove(build.build_id)  # not kept: the next try copies again
                raise
        artifact_store.cache_pointer_set(*key, build.build_id, build.manifest_sha256)
        return loaded

    def _database_down(self, exc: Exception) -> None:
        close_old_connections()
        connection.close()
        reason = f"database unreachable ({type(exc).__name__}); serving the last locally cached indexes"
        state = CacheState(loaded=dict(self._state.loaded), degraded=reason)
        if not state.loaded:
            for engine in IndexEngine.values:
                for image_type in GalleryType.values:
                    pointer = artifact_store.cache_pointer_get(engine, image_type)
                    files = artifact_store.cache_get(pointer[0]) if pointer else None
                    if pointer and files:
                        try:
                            state.loaded[(engine, image_type)] = unpack_artifacts(files, manifest_sha256=pointer[1])
                        except ArtifactError as error:
                            state.load_errors[(engine, image_type)] = str(error)
        logger.warning("%s: %s", reason, exc)
        self._state = state

    def _on_first_start(self) -> None:
        if not settings.SIMSEARCH_REBUILD_ON_STARTUP:
            return
        from indexing.selectors import serving_engine
        from indexing.services import index_build_request

        try:
            # Every serving process asks; the one-pending-build constraint makes it one build.
            index_build_request(index_type="all", engine=serving_engine(settings.USE_INDEX_V2))
        except Exception:
            logger.exception("SIMSEARCH_REBUILD_ON_STARTUP: could not request the start-up rebuild")

    # -- anomaly models (a normal build's per-product artifacts, loaded on first use) ---------

    def anomaly_model(self, loaded: LoadedIndex, product_code: str) -> AnomalyModel:
        """The product's anomaly model of this build. Its file is checked against the sha256 in the
        manifest (which the database pins); models of builds no longer served are dropped."""
        key = (loaded.build_id, product_code)
        model = self._anomaly_models.get(key)
        if model is None:
            model = AnomalyModel.from_bytes(
                _extra_file(loaded, loaded.manifest["anomaly_models"][product_code]["file"])
            )
            self._anomaly_models = self._serving_only(self._anomaly_models) | {key: model}
        return model

    def focus_descriptors(self, loaded: LoadedIndex) -> FocusDescriptors:
        """The defect-region descriptors of this defect build (indexing/focus.py), checked like the
        anomaly models. KeyError when the build has none."""
        descriptors = self._focus.get(loaded.build_id)
        if descriptors is None:
            descriptors = FocusDescriptors.from_bytes(_extra_file(loaded, loaded.manifest["focus"]["file"]))
            self._focus = self._serving_only(self._focus) | {loaded.build_id: descriptors}
        return descriptors

    def _serving_only(self, by_build: dict) -> dict:
        """The entries (keyed by build id, or by a tuple starting with it) of builds still served."""
        serving = {index.build_id for index in self._state.loaded.values()}
        return {k: v for k, v in by_build.items() if (k[0] if isinstance(k, tuple) else k) in serving}

    def reset(self) -> None:
        """Forget everything (tests; a process that must reload from scratch)."""
        with self._refresh_lock:
            self._state = CacheState()
            self._checked_at = float("-inf")
            self._started = False
            self._anomaly_models = {}
            self._focus = {}


def _extra_file(loaded: LoadedIndex, name: str) -> bytes:
    """A file of the build loaded on demand, checked against the sha256 in its manifest (which
    the database pins)."""
    expected = loaded.manifest["files"][name]["sha256"]
    prefix = build_artifact_prefix(loaded.build_id)
    if prefix is None:
        raise ArtifactError(f"build {loaded.build_id} was removed")
    data = read_object(f"{prefix}/{name}")
    if sha256_hex(data) != expected:
        raise ArtifactError(f"{name} of build {loaded.build_id} does not match its manifest")
    return data


index_cache = IndexCache()
