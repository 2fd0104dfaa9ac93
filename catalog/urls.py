from catalog.apis import DefectTypeViewSet, ImageViewSet, ProductViewSet
from simsearch_project.routers import OptionalSlashRouter

router = OptionalSlashRouter()
router.register("products", ProductViewSet, basename="product")
router.register("defect-types", DefectTypeViewSet, basename="defect-type")
router.register("images", ImageViewSet, basename="image")

urlpatterns = router.urls
