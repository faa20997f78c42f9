"""What the README's "Your own photos" walkthrough starts from, made offline for its test: a folder of
real photos (the sample photos scikit-image installs with itself) with three captions each in
``captions.csv``, and a tiny CLIP saved with ``save_pretrained`` standing in for a downloaded checkpoint.

    python tests/readme_photos.py PHOTOS_FOLDER CLIP_FOLDER
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
from PIL import Image

PHOTOS = {
    "astronaut.png": ["an astronaut in a white spacesuit", "a smiling woman in a space suit", "an astronaut by a flag"],
    "coffee.png": ["a cup of coffee on a saucer", "a white coffee cup with a spoon", "coffee seen from above"],
    "chelsea.png": ["a ginger cat looking to the side", "a close up of a tabby cat", "an orange cat"],
    "rocket.jpg": ["a rocket on the launch pad", "a space shuttle ready for launch", "a rocket under a blue sky"],
    "motorcycle_left.png": ["a red motorcycle in a room", "a motorbike seen from the side", "a shiny motorcycle"],
    "hubble_deep_field.jpg": [
        "galaxies in deep space",
        "a telescope image of distant galaxies",
        "stars on a black sky",
    ],
    "retina.jpg": ["the back of a human eye", "a retina with blood vessels", "an orange image of an eye"],
    "camera.png": ["a man with a camera on a tripod", "a black and white photo of a cameraman", "a photographer"],
    "coins.png": ["old coins on a dark background", "a grey picture of many coins", "rows of coins"],
    "moon.png": ["the surface of the moon", "craters on the moon", "a grey photo of lunar craters"],
    "page.png": ["a page of printed text", "a scanned book page", "text on a grey page"],
    "brick.png": ["a brick wall", "grey bricks", "a wall of bricks"],
    "ihc.png": ["stained tissue under a microscope", "cells stained brown and blue", "a tissue sample"],
    "horse.png": ["the silhouette of a horse", "a black horse shape on white", "a running horse outline"],
}


def photos(folder: Path, side: int = 96) -> Path:
    """The photos at most ``side`` pixels wide or high, and ``captions.csv`` (image, caption)."""
    import skimage

    source = Path(skimage.__file__).parent / "data"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, captions in PHOTOS.items():
        image = Image.open(source / name)
        image.thumbnail((side, side))
        target = Path(name).with_suffix(".png").name
        image.convert("RGB").save(folder / target)
        rows += [(target, caption) for caption in captions]
    manifest = folder / "captions.csv"
    pd.DataFrame(rows, columns=["image", "caption"]).to_csv(manifest, index=False)
    return manifest


def main() -> None:
    from plugins import tiny_hub

    photos(Path(sys.argv[1]))
    tiny_hub.clip(Path(sys.argv[2]))


if __name__ == "__main__":
    main()
