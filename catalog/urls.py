from rest_framework.routers import DefaultRouter

from catalog.apis import DefectTypeViewSet, ImageViewSet, ProductViewSet

# Paths answer with and without the trailing slash (clients of the old service omit it).
router = DefaultRouter(trailing_slash="/?")
router.register("products", ProductViewSet, basename="product")
router.register("defect-types", DefectTypeViewSet, basename="defect-type")
router.register("images", ImageViewSet, basename="image")

urlpatterns = router.urls
