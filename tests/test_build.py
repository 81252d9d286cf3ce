"""End-to-end `build_dataset` on small inputs made from the real Gaia XP sample rows."""

from __future__ import annotations

import shutil
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
from astropy.table import Table

from benchmarks.bench_build import write_synthetic_inputs
from dataset_builder import DatasetBuildError, build_dataset, read_xp_continuous
from dataset_builder.__main__ import main as cli_main
from dataset_builder.features import g_band_flux, relevancy_mask
from dataset_builder.schema import OBSERVATION_NAMES, SPLITS
from dataset_builder.splits import assign_split

N_STARS = 240


def _load(folder: Path) -> datasets.DatasetDict:
    # `datasets` caches local folders by name + card hash, not by content: isolate each build's cache
    return datasets.load_dataset(str(folder), cache_dir=str(folder.parent / f"cache-{folder.name}"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    return write_synthetic_inputs(tmp_path_factory.mktemp("inputs"), N_STARS, seed=1, n_xp_files=3)


@pytest.fixture(scope="module")
def built(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("build") / "dataset"
    summary = build_dataset(**inputs, out_dir=out, rows_per_shard=60, num_proc=2)
    return out, summary


def _expected_stars(inputs: dict) -> np.ndarray:
    """The star set computed independently: XP stars passing the paper's cuts + labelled APOGEE stars."""
    phot = Table.read(inputs["gaia_source"]).to_pandas().set_index("source_id")
    xp_ids, complete = [], []
    for path in inputs["gaia_xp"]:
        xp = read_xp_continuous(path)
        xp_ids.append(xp.source_id)
        complete.append((xp.bp_n_relevant_bases > 0) & (xp.rp_n_relevant_bases > 0))
    xp_ids, complete = np.concatenate(xp_ids), np.concatenate(complete)
    p = phot.loc[xp_ids]
    passes = (
        complete
        & (p.bp_rp > 0).to_numpy()
        & (p.bp_rp < 4).to_numpy()
        & (p.phot_g_mean_mag > 6).to_numpy()
        & (p.phot_g_mean_mag < 17.5).to_numpy()
        & (p.ruwe < 1.4).to_numpy()
        & (p.phot_bp_rp_excess_factor < 2).to_numpy()
    )
    apogee = Table.read(inputs["allstar"]).to_pandas()
    good = apogee[(apogee.GAIAEDR3_SOURCE_ID > 0) & (apogee.STARFLAG == 0) & (apogee.ASPCAPFLAG == 0)]
    return np.union1d(xp_ids[passes], good.GAIAEDR3_SOURCE_ID.to_numpy())


def test_counts_splits_and_load_dataset(inputs, built):
    out, summary = built
    stars = _expected_stars(inputs)
    split = assign_split(stars, (0.8, 0.1, 0.1))
    expected = {name: int((split == i).sum()) for i, name in enumerate(SPLITS)}
    assert summary.rows_per_split == expected and min(expected.values()) > 0
    loaded = _load(out)
    for i, name in enumerate(SPLITS):
        assert loaded[name].num_rows == expected[name]
        assert np.array_equal(np.asarray(loaded[name]["source_id"]), stars[split == i])
    features = loaded["train"].features
    assert features["source_id"].dtype == "int64"
    assert all(
        features[n].dtype == "float32" and features[f"{n}_err"].dtype == "float32" for n in OBSERVATION_NAMES
    )
    assert features["true_teff"].dtype == "float32"
    streamed = datasets.load_dataset(str(out), streaming=True, cache_dir=str(out.parent / "cache"))
    assert {name: sum(1 for _ in streamed[name]) for name in SPLITS} == expected
    assert len(list((out / "data").glob("train-*-of-*.parquet"))) == -(-expected["train"] // 60)
    assert summary.rows_per_s > 0 and summary.removed_per_cut["ruwe >= 1.4"] > 0


def test_row_values_follow_the_paper(inputs, built):
    out, _ = built
    table = _load(out)["train"].to_pandas().set_index("source_id")
    phot = Table.read(inputs["gaia_source"]).to_pandas().set_index("source_id")
    xp = read_xp_continuous(inputs["gaia_xp"][0])
    with_xp = [
        i for i, sid in enumerate(xp.source_id) if sid in table.index and np.isfinite(table.loc[sid, "rp0"])
    ]
    assert with_xp
    row = with_xp[0]
    sid = xp.source_id[row]
    f_g = g_band_flux(phot.loc[sid, "phot_g_mean_mag"])
    keep = relevancy_mask(xp.bp_n_relevant_bases[row : row + 1])[0]
    got = table.loc[sid, [f"bp{i}" for i in range(55)]].to_numpy(dtype=np.float64)
    np.testing.assert_allclose(got[keep], (xp.bp_coefficients[row] / f_g)[keep], rtol=1e-6)
    assert np.isnan(got[~keep]).all()
    assert table.loc[sid, "jk"] == pytest.approx(phot.loc[sid, "j_m"] - phot.loc[sid, "ks_m"], rel=1e-5) or (
        phot.loc[sid, "j_m"] > 99
    )
    ebv = phot.loc[sid, "ebv"]
    assert table.loc[sid, "logebv"] == pytest.approx(np.log(ebv) if ebv > 0 else -7.0, rel=1e-5)
    truth = pd.read_parquet(inputs["extra"][0]).set_index("source_id")
    assert table.loc[sid, "true_teff"] == truth.loc[sid, "true_teff"]


def test_apogee_duplicates_keep_the_best_row(inputs, built):
    out, _ = built
    apogee = Table.read(inputs["allstar"]).to_pandas()
    apogee = apogee[apogee.GAIAEDR3_SOURCE_ID > 0]
    usable = (apogee.STARFLAG == 0) & (apogee.ASPCAPFLAG == 0)
    duplicated = apogee[apogee.GAIAEDR3_SOURCE_ID.duplicated(keep=False) & usable]
    loaded = _load(out)
    table = pd.concat([loaded[s].to_pandas() for s in SPLITS]).set_index("source_id")
    checked = 0
    for sid, rows in duplicated.groupby("GAIAEDR3_SOURCE_ID"):
        best = rows.sort_values("SNR", ascending=False).iloc[0]
        assert table.loc[sid, "teff"] == pytest.approx(best.TEFF)
        checked += 1
    assert checked > 0


def test_same_inputs_give_byte_identical_output(inputs, built, tmp_path):
    out, _ = built
    again = tmp_path / "again"
    build_dataset(**inputs, out_dir=again, rows_per_shard=60, num_proc=1)
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for name in files:
        assert (out / name).read_bytes() == (again / name).read_bytes(), name


def _split_of(folder: Path) -> dict[int, str]:
    loaded = _load(folder)
    return {sid: name for name in loaded for sid in loaded[name]["source_id"]}


def test_adding_stars_does_not_move_existing_stars(inputs, built, tmp_path):
    out, _ = built
    fewer_inputs = dict(inputs, gaia_xp=inputs["gaia_xp"][:1], allstar=None)
    build_dataset(**fewer_inputs, out_dir=tmp_path / "fewer", num_proc=1)
    fewer, full = _split_of(tmp_path / "fewer"), _split_of(out)
    assert 0 < len(fewer) < len(full)
    assert all(full[sid] == split for sid, split in fewer.items())


def test_existing_output_is_refused_then_atomically_replaced(inputs, tmp_path):
    out = tmp_path / "dataset"
    out.mkdir()
    (out / "marker").write_text("old")
    with pytest.raises(DatasetBuildError, match="already exists"):
        build_dataset(**inputs, out_dir=out, num_proc=1)
    assert (out / "marker").read_text() == "old"
    build_dataset(**inputs, out_dir=out, num_proc=1, overwrite=True)
    assert not (out / "marker").exists() and (out / "README.md").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset"]


def _bad_xp_csv(tmp_path: Path, source: Path) -> Path:
    bad = tmp_path / "bad.csv"
    lines = source.read_text().splitlines()
    lines[3] = lines[3].replace("(", "(oops, ", 1)
    bad.write_text("\n".join(lines) + "\n")
    return bad


def _truncated_fits(tmp_path: Path, source: Path) -> Path:
    bad = tmp_path / "allstar_truncated.fits"
    shutil.copy(source, bad)
    with open(bad, "r+b") as handle:
        handle.truncate(bad.stat().st_size - 2880 * 2)
    return bad


def _no_ruwe(tmp_path: Path, source: Path) -> Path:
    table = Table.read(source)
    table.remove_column("ruwe")
    bad = tmp_path / "gaia_source_no_ruwe.fits"
    table.write(bad)
    return bad


@pytest.mark.parametrize(
    "key, make_bad, message",
    [
        ("gaia_xp", _bad_xp_csv, r"bad\.csv: data row 3 .*malformed array"),
        ("allstar", _truncated_fits, r"allstar_truncated\.fits: cannot be read"),
        ("gaia_source", _no_ruwe, r"gaia_source_no_ruwe\.fits: missing required column.*ruwe"),
        ("gaia_xp", None, r"also appear in another XP file"),
    ],
    ids=["malformed-array", "truncated-fits", "missing-column", "duplicate-across-files"],
)
def test_bad_input_names_the_file_and_leaves_output_untouched(inputs, tmp_path, key, make_bad, message):
    out = tmp_path / "dataset"
    out.mkdir()
    (out / "marker").write_text("old")
    bad_inputs = dict(inputs)
    if make_bad is None:
        bad_inputs["gaia_xp"] = inputs["gaia_xp"] + inputs["gaia_xp"][:1]
    elif key == "gaia_xp":
        bad_inputs["gaia_xp"] = [make_bad(tmp_path, inputs["gaia_xp"][0])]
    else:
        bad_inputs[key] = make_bad(tmp_path, inputs[key])
    with pytest.raises(DatasetBuildError, match=message):
        build_dataset(**bad_inputs, out_dir=out, num_proc=2, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["marker"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".dataset")]


def test_cli_build_prints_summary(inputs, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["build", "--gaia-xp", *map(str, inputs["gaia_xp"]), "--gaia-source", str(inputs["gaia_source"])]
    argv += ["--allstar", str(inputs["allstar"]), "--extra", str(inputs["extra"][0]), "--out", str(out)]
    assert cli_main(argv + ["--num-proc", "1"]) == 0
    printed = capsys.readouterr().out
    assert "train" in printed and "rows/s" in printed
    assert cli_main(argv) == 2 and "already exists" in capsys.readouterr().err
