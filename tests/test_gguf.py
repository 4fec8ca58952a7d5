"""Guards builder/deploy/gguf.py where it fetches llama.cpp's converter: the llama-cpp-python
sdist is unpacked only when its sha256 is the one pinned in the code."""

import io
import tarfile

import pytest

from builder.deploy import gguf
from builder.errors import UserError


def fake_sdist(path):
    """A .tar.gz laid out like the llama-cpp-python sdist, with other bytes inside."""
    prefix = f"llama_cpp_python-{gguf.LLAMA_CPP_VERSION}/vendor/llama.cpp/"
    with tarfile.open(path, "w:gz") as tar:
        for name in ("convert_hf_to_gguf.py", "conversion/__init__.py", "gguf-py/gguf/x.py"):
            data = b"print('not llama.cpp')\n"
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_an_sdist_whose_sha256_differs_is_refused_before_it_is_unpacked(tmp_path, monkeypatch):
    """A tampered or wrong llama-cpp-python sdist never becomes the converter export runs."""
    sdist = fake_sdist(tmp_path / f"llama_cpp_python-{gguf.LLAMA_CPP_VERSION}.tar.gz")
    monkeypatch.setenv("BUILDER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(gguf.SDIST_ENV, str(sdist))
    with pytest.raises(UserError) as caught:
        gguf.converter_dir(log=lambda *_: None)
    message = str(caught.value)
    assert str(sdist) in message and "sha256" in message and gguf.SDIST_SHA256 in message
    assert not (tmp_path / "cache" / f"llama.cpp-convert-{gguf.LLAMA_CPP_VERSION}").exists()
    assert not list((tmp_path / "cache").glob(".llama-cpp-sdist-*"))
