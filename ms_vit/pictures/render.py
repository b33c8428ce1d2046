"""Draw a predicted label onto a copy of an image."""
from PIL import Image, ImageDraw, ImageFont


def render_label(image_path: str, text: str, out_path: str) -> None:
    """Write ``image_path`` with ``text`` in a band across its top to ``out_path``.

    The font scales with the image (readable from 28 px digits to multi-megapixel photos); small images are
    first enlarged so that the text has pixels to be drawn with."""
    with Image.open(image_path) as source:
        image = source.convert("RGB")
    if min(image.size) < 224:
        factor = 224 / min(image.size)
        image = image.resize((round(image.width * factor), round(image.height * factor)), Image.NEAREST)
    size = max(14, image.height // 12)
    font = ImageFont.load_default(size=size)
    draw = ImageDraw.Draw(image)
    while size > 8 and draw.textlength(text, font=font) > image.width - 2 * (size // 3):
        size -= 1
        font = ImageFont.load_default(size=size)
    pad = max(2, size // 3)
    left, top, right, bottom = draw.textbbox((pad, pad), text, font=font)
    draw.rectangle((0, 0, image.width, bottom + pad), fill=(0, 0, 0))
    draw.text((pad, pad), text, fill=(255, 255, 0), font=font)
    image.save(out_path)
