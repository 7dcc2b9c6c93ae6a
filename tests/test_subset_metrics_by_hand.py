"""The single-label row of the test report: AP and AUROC over the images with one label only,
checked by hand on images that the scores do not separate. (The demo's row reads 100.0 in
every column because its trained model does separate them: each single-label synthetic test
image holds one object in a colour of its own, and every class's lowest softmax score on its
own single-object images lies above its highest on the others'.)"""
import numpy as np
import pytest

from tailclip.metrics import subset_metrics

# Rows: images; columns: two classes. Image 1 (class 1 only) scores higher on class 0 than
# image 0 (class 0 only) does; image 2 has both labels and is in the multi-label subset only.
SCORES = np.array([[0.6, 0.4], [0.7, 0.3], [0.5, 0.5], [0.8, 0.2]])
TARGETS = np.array([[1, 0], [0, 1], [1, 1], [1, 0]])


def test_single_label_ap_and_auroc_by_hand():
    single = subset_metrics(SCORES, TARGETS)["single_label"]
    # Class 0 over images 0, 1, 3 ranked 3 (+), 1 (-), 0 (+): AP = (1/1 + 2/3) / 2.
    # Class 1 ranked 0 (-), 1 (+), 3 (-): AP = 1/2. Each class wins one of its two pairs: AUROC 1/2.
    assert single["AP"] == pytest.approx([5 / 6, 1 / 2])
    assert single["mAP"] == pytest.approx(2 / 3)
    assert single["AUROC"] == pytest.approx(0.5)
