"""TailCLIP on COCO-MLT with Apple's DFN5B ViT-H/14 at 378 pixels: the backbone options of
configs/voc_mlt_vith14_378_dfn5b.py (whose comments give the reasons for this backbone and
its memory estimate) on the published COCO-MLT ViT-B/16 recipe (configs/coco_mlt_vitb16.py).

Train: python train.py --config=configs/coco_mlt_vith14_378_dfn5b.py
Test:  python test.py --config=configs/coco_mlt_vith14_378_dfn5b.py --zeroshot=True
       python test.py --config=configs/coco_mlt_vith14_378_dfn5b.py --checkpoint=best_valid_mAP.pt
"""
import runpy
from pathlib import Path

CONFIGS = Path(__file__).parent
PublishedRecipe = runpy.run_path(str(CONFIGS / "coco_mlt_vitb16.py"))["CFG"]
DFN5BViTH14 = runpy.run_path(str(CONFIGS / "voc_mlt_vith14_378_dfn5b.py"))["DFN5BViTH14"]


class CFG(DFN5BViTH14, PublishedRecipe):
    pass
