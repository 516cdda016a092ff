"""Derives the FER worker's small test images from scikit-image's bundled photos (run once; the
outputs are committed). pip install scikit-image pillow numpy; python make_testdata.py"""
import numpy as np
from PIL import Image
from skimage import data

astro = Image.fromarray(data.astronaut())                       # 512x512, one smiling face
astro.resize((256, 256), Image.BILINEAR).save("astronaut_256.png", optimize=True)
# Two faces: a head-and-shoulders crop of the astronaut and its mirror image side by side
# (320x160), so that each face is large enough for the short-range detector.
head = astro.crop((120, 30, 330, 240)).resize((160, 160), Image.BILINEAR)
two = Image.new("RGB", (320, 160))
two.paste(head, (0, 0))
two.paste(head.transpose(Image.FLIP_LEFT_RIGHT), (160, 0))
two.save("two_faces.png", optimize=True)
# Uniform noise: no face.
rng = np.random.default_rng(7)
Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)).save("noise.png", optimize=True)
