"""The packaged text encoder: loads from the PyPI package, checksum enforced, deterministic, meaningful."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from streamrec.errors import ModelError
from streamrec.models import text
from streamrec.models.text import ContentExtraMissing, TextEncoder, packaged_model_zip, unpack_model


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> TextEncoder:
    return TextEncoder(tmp_path_factory.mktemp("text-cache"), threads=1)


def test_vectors_are_normalised_and_deterministic(encoder: TextEncoder) -> None:
    titles = ["Toy Story (1995). Animation, Children's, Comedy", "Heat (1995). Action, Crime, Thriller"]
    first = encoder.encode(titles)
    again = encoder.encode(list(reversed(titles)), batch_size=1)[::-1]
    assert first.shape == (2, text.TEXT_DIM) and first.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(first, again, atol=1e-5)  # batch composition and padding do not change a vector


def test_similar_titles_are_closer_than_unrelated_ones(encoder: TextEncoder) -> None:
    star_wars, empire, sense = encoder.encode([
        "Star Wars (1977). Action, Adventure, Sci-Fi",
        "The Empire Strikes Back (1980). Action, Adventure, Sci-Fi",
        "Sense and Sensibility (1995). Drama, Romance",
    ])
    assert star_wars @ empire > star_wars @ sense + 0.2
    assert star_wars @ empire > empire @ sense + 0.2


def test_a_zip_that_is_not_the_pinned_one_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "model.zip"
    with zipfile.ZipFile(fake, "w") as zf:
        zf.writestr("config.json", "{}")
    with pytest.raises(ModelError, match="SHA-256"):
        unpack_model(tmp_path / "cache", zip_path=fake)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
    # The real package's zip against a wrong pin: refused as well.
    with pytest.raises(ModelError, match="refusing"):
        unpack_model(tmp_path / "cache", zip_path=packaged_model_zip(), expected_sha256="0" * 64)


def test_a_missing_extra_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(text, "PACKAGE", "no_such_text_encoder_package")
    with pytest.raises(ContentExtraMissing, match=r"streamrec\[content\]"):
        packaged_model_zip()
