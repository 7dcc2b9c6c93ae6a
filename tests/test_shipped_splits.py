"""The benchmarks' split, label and caption files that ship in datasets/: the published bytes,
tracked by git, with the images left out."""
import re
import shutil
import subprocess

import pytest

from clip.download import sha256_of
from tailclip.tools.download import BENCHMARKS, SHIPPED_DATASETS

SHIPPED = [(name, file_name) for name, spec in sorted(BENCHMARKS.items()) for file_name in spec.dataset.sha256]


def test_eight_files_ship():
    assert len(SHIPPED) == 8
    assert all((SHIPPED_DATASETS / name / file_name).is_file() for name, file_name in SHIPPED)


@pytest.mark.parametrize("name,file_name", SHIPPED)
def test_shipped_file_has_its_pinned_sha256_and_the_reference_bytes(shared_data, name, file_name):
    shipped = SHIPPED_DATASETS / name / file_name
    assert sha256_of(shipped) == BENCHMARKS[name].dataset.sha256[file_name]
    assert shipped.read_bytes() == (shared_data / name / file_name).read_bytes()


def test_pinned_sha256_are_those_the_reference_data_lists(shared_data):
    listed = dict((path, digest) for digest, path in
                  re.findall(r"^([0-9a-f]{64})  (\S+)$", (shared_data / "README.md").read_text(), flags=re.M))
    pinned = {f"{name}/{file_name}": BENCHMARKS[name].dataset.sha256[file_name] for name, file_name in SHIPPED}
    assert pinned == listed


def ignored_by_git(repo_root, path: str) -> bool:
    result = subprocess.run(["git", "check-ignore", "--no-index", "-q", path], cwd=repo_root)
    assert result.returncode in (0, 1)
    return result.returncode == 0


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_git_tracks_the_split_files_and_ignores_images(repo_root):
    if not (repo_root / ".git").exists():
        pytest.skip("not a git checkout")
    for name, file_name in SHIPPED:
        assert not ignored_by_git(repo_root, f"datasets/{name}/{file_name}")
    for path in ["datasets/voc_mlt/VOCdevkit/VOC2012/JPEGImages/2008_000001.jpg",
                 "datasets/voc_mlt/VOCtrainval_11-May-2012.tar",
                 "datasets/coco_mlt/images/train2017/000000000001.jpg",
                 "datasets/coco_mlt/val2017.zip",
                 "datasets/synthetic_mlt/synthetic_lt_train.txt"]:
        assert ignored_by_git(repo_root, path), path
