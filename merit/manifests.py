"""Manifests for corpora whose labels are not one table: IEMOCAP.

``train.py`` reads one CSV per corpus (file, label, speaker, split columns). MSP-Podcast ships
one (``Labels/labels_consensus.csv``, read as is: see ``recipes/msp-podcast.md``); IEMOCAP keeps
its labels in one evaluation file per dialogue, which :func:`iemocap_manifest` turns into that
table::

    python -m merit.manifests iemocap /data/IEMOCAP_full_release --out iemocap.csv

Columns: ``file_name`` (relative to the corpus root, so the CSV can live anywhere with
``--audio_root``), ``emotion`` (IEMOCAP's consensus code as written), ``label`` (the usual
4-class merge: ``exc`` -> ``hap``, the other codes unchanged, so ``--labels neu,hap,ang,sad``
keeps the four classes and reports what it drops), ``speaker`` (``Ses01F``: session and the
speaker's gender, IEMOCAP's ten actors), ``session`` (``Session1`` ... ``Session5``, the
leave-one-session-out folds: ``--split_column session --split_map 'Session5=test,*=train'``),
and ``valence``, ``arousal``, ``dominance`` (the evaluators' mean ratings, 1-5).
"""

from __future__ import annotations

import argparse
import csv
import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["IEMOCAP_MERGE", "IemocapUtterance", "iemocap_manifest", "read_iemocap", "main"]

#: The 4-class setting of the MLKD and adapter papers (and most IEMOCAP work): excited is
#: merged into happy.
IEMOCAP_MERGE = {"exc": "hap"}
IEMOCAP_COLUMNS = (
    "file_name",
    "emotion",
    "label",
    "speaker",
    "session",
    "valence",
    "arousal",
    "dominance",
)
#: ``[6.2901 - 8.2357]	Ses01F_impro01_F000	neu	[2.5000, 2.5000, 2.5000]``
_TURN = re.compile(
    r"^\[\s*[\d.]+\s*-\s*[\d.]+\s*\]\s+(?P<name>Ses\d\d[FM]_\S+_(?P<gender>[FM])\d+)\s+"
    r"(?P<emotion>\w+)\s+\[\s*(?P<v>[\d.]+)\s*,\s*(?P<a>[\d.]+)\s*,\s*(?P<d>[\d.]+)\s*\]"
)


@dataclass(frozen=True)
class IemocapUtterance:
    """One labelled turn of IEMOCAP."""

    file_name: str
    emotion: str
    speaker: str
    session: str
    valence: float
    arousal: float
    dominance: float

    @property
    def label(self) -> str:
        return IEMOCAP_MERGE.get(self.emotion, self.emotion)


def read_iemocap(root: str | Path) -> list[IemocapUtterance]:
    """Every labelled turn under ``root`` (the folder holding ``Session1`` ... ``Session5``).

    Reads ``Session*/dialog/EmoEvaluation/*.txt``; a turn is kept when its wav exists under
    ``Session*/sentences/wav/<dialogue>/``. A root without sessions, or sessions without a
    single labelled turn, is an error that says which folder was searched.
    """
    root = Path(root).expanduser()
    sessions = sorted(p for p in root.glob("Session[1-5]") if p.is_dir())
    if not sessions:
        raise ValueError(f"{root}: no Session1 ... Session5 folders (is this IEMOCAP's root?)")
    utterances: list[IemocapUtterance] = []
    missing: list[str] = []
    for session in sessions:
        for evaluation in sorted((session / "dialog" / "EmoEvaluation").glob("*.txt")):
            dialogue = evaluation.stem
            for line in evaluation.read_text(encoding="utf-8", errors="replace").splitlines():
                turn = _TURN.match(line.strip())
                if turn is None:
                    continue
                name = turn["name"]
                wav = session / "sentences" / "wav" / dialogue / f"{name}.wav"
                if not wav.is_file():
                    missing.append(str(wav.relative_to(root)))
                    continue
                utterances.append(
                    IemocapUtterance(
                        file_name=wav.relative_to(root).as_posix(),
                        emotion=turn["emotion"],
                        speaker=name[:5] + turn["gender"],
                        session=session.name,
                        valence=float(turn["v"]),
                        arousal=float(turn["a"]),
                        dominance=float(turn["d"]),
                    )
                )
    if not utterances:
        hint = (
            f" ({len(missing)} labelled turn(s) had no wav, e.g. {missing[0]})" if missing else ""
        )
        raise ValueError(
            f"{root}: no labelled turn with its wav found under "
            f"Session*/dialog/EmoEvaluation/*.txt and Session*/sentences/wav/{hint}"
        )
    if missing:
        logger.warning(
            "%d labelled IEMOCAP turn(s) have no wav and are left out, e.g. %s",
            len(missing),
            ", ".join(missing[:3]),
        )
    return utterances


def iemocap_manifest(root: str | Path, out: str | Path, *, overwrite: bool = False) -> Counter:
    """Write the IEMOCAP manifest (columns in the module docstring); returns the label counts.

    An existing ``out`` is kept unless ``overwrite``: a manifest may carry hand edits.
    """
    out = Path(out).expanduser()
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    utterances = read_iemocap(root)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(IEMOCAP_COLUMNS)
        for u in utterances:
            writer.writerow(
                [
                    u.file_name,
                    u.emotion,
                    u.label,
                    u.speaker,
                    u.session,
                    f"{u.valence:g}",
                    f"{u.arousal:g}",
                    f"{u.dominance:g}",
                ]
            )
    return Counter(u.label for u in utterances)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m merit.manifests", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="corpus", required=True)
    iemocap = sub.add_parser("iemocap", help="IEMOCAP_full_release -> one CSV")
    iemocap.add_argument("root", type=Path, help="the folder holding Session1 ... Session5")
    iemocap.add_argument("--out", type=Path, required=True, help="CSV to write")
    iemocap.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)
    try:
        counts = iemocap_manifest(args.root, args.out, overwrite=args.overwrite)
    except (ValueError, FileExistsError) as err:
        parser.exit(2, f"error: {err}\n")
    listed = ", ".join(f"{label} {count}" for label, count in counts.most_common())
    print(f"wrote {args.out}: {sum(counts.values())} utterances ({listed})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
