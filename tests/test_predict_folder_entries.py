"""predict.py on a folder: links to folders are followed (each folder read once), and every
entry it does not read (a broken link, a FIFO, a folder reached again) is listed with why."""
import os

import numpy as np
import pytest
from PIL import Image

from tailclip.tools.predict import find_images


def image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)
    return path


pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")


def test_links_followed_and_every_entry_not_read_listed(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    linked = image(elsewhere / "linked.png")
    folder = tmp_path / "photos"
    own = image(folder / "a.jpg")
    (folder / "b_link").symlink_to(elsewhere, target_is_directory=True)
    (folder / "c_broken.jpg").symlink_to(tmp_path / "gone.jpg")
    os.mkfifo(folder / "d_pipe.jpg")
    (folder / "e_loop").symlink_to(folder, target_is_directory=True)
    (folder / "notes.txt").write_text("x")
    images, not_read = find_images([folder])
    assert images == [own, folder / "b_link" / linked.name]
    reasons = {result.path: result.error for result in not_read}
    assert reasons == {
        str(folder / "c_broken.jpg"): f"a broken symbolic link (to {tmp_path / 'gone.jpg'}, which does not exist)",
        str(folder / "d_pipe.jpg"): "not a regular file or folder (a FIFO, socket or device)",
        str(folder / "e_loop"): f"the folder {folder} again (through a symbolic link), read once",
        str(folder / "notes.txt"): "not an image file (extension '.txt')",
    }


def test_a_fifo_named_directly_is_no_missing_file(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    _, [result] = find_images([tmp_path / "pipe"])
    assert result.error == "not a regular file or folder (a FIFO, socket or device)"
