"""Shared test setup: offline, remote-code cache in a temporary folder, tiny models."""

import os
import tempfile

# Before transformers is imported anywhere: no network, and remote code cached in a throwaway
# folder instead of ~/.cache (tests must not write into the user's home).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_MODULES_CACHE", tempfile.mkdtemp(prefix="merit-hf-modules-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from modeling_merit import MeritConfig, MeritModel, minimal_merit_config  # noqa: E402

# Tiny models gain nothing from a second thread, and two OpenMP threads slow down many times
# over when the two cores are busy with other work (measured: 160 s instead of 15 s).
torch.set_num_threads(1)


def make_config(**overrides) -> MeritConfig:
    """The tiny MERIT config, deterministic in training (no expert dropout)."""
    return minimal_merit_config(**{"expert_dropout": 0.0, **overrides})


def make_model(seed: int = 0, **overrides) -> MeritModel:
    torch.manual_seed(seed)
    return MeritModel(make_config(**overrides))


# Smallest corpus the builder accepts: a few seconds to build, for tests that only need files.
MICRO_CORPUS = dict(
    num_speakers=3, num_sentences=1, utterances_per_speaker=4, noise_seconds=0.25, progress=False
)


def make_batch(lengths=(8000, 6000), seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random audio of the given lengths, zero-padded, with its attention mask."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), max(lengths), generator=gen) * 0.1
    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    return x * mask, mask


def assert_padded_batch_equals_one_by_one(model: MeritModel, lengths=(8000, 5123, 6400)) -> None:
    """Logits, enhanced audio (zero past the end) and routing of a padded batch equal each
    utterance run alone: padding must never reach what a real sample sees."""
    x, mask = make_batch(lengths=lengths)
    with torch.no_grad():
        together = model(x, attention_mask=mask)
        for i, n in enumerate(mask.sum(-1).tolist()):
            alone = model(x[i : i + 1, :n])
            close = dict(atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(alone.logits, together.logits[i : i + 1], **close)
            torch.testing.assert_close(
                alone.enhanced_waveform, together.enhanced_waveform[i : i + 1, :n], **close
            )
            assert together.enhanced_waveform[i, n:].abs().sum().item() == 0.0
            frames = alone.frame_mask.shape[1]
            assert int(together.frame_mask[i].sum()) == frames
            for task, indices in (alone.routing_indices or {}).items():
                assert torch.equal(indices[0], together.routing_indices[task][i, :frames])


@pytest.fixture
def tiny_model() -> MeritModel:
    return make_model().eval()


# ------------------------------------------------------------------------------------------
# Shared by test_training.py and test_evaluation.py: a tiny embedded corpus, built once.
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """6 speakers (4 train / 1 validation / 1 test) x 4 sentences x 4 emotions + noise bank."""
    from merit.corpus import build_corpus

    root = tmp_path_factory.mktemp("tiny-corpus") / "corpus"
    return build_corpus(root, num_speakers=6, num_sentences=4, noise_seconds=3.0, progress=False)
