"""Which files of an image folder are images (shared by the loaders, the cache and its builder)."""

from torchvision.datasets.folder import IMG_EXTENSIONS

# torchvision's list has no GIF, and product photos scraped from the web include many.
IMAGE_EXTENSIONS = tuple(IMG_EXTENSIONS) + (".gif",)


def is_image_file(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)
