"""Bad input, fuzzed: every case of issue 18's bad-input half and a corpus of our own.

Each test feeds one bad (or unusual but valid) input to the tokenizer, the predictor, the collator, the readers,
the checkpoint loader or the converter and checks the one right outcome: either the same answer as the clean
input, or an error that names the column / file / parameter and says what to do. A silent wrong answer or an
error from deep inside numpy, pandas, safetensors or torch fails.
"""

import gzip
import json
import shutil
import warnings
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
import torch
from astropy import units as u
from astropy.table import MaskedColumn, QTable, Table
from safetensors.torch import load_file, save_file

from conftest import SHARED_DATA, tiny_config
from dataset_builder import DatasetBuildError, read_gaia_source, read_xp_continuous
from dataset_builder.readers import GAIA_SOURCE_REQUIRED
from modeling_astro import AstroFeatureExtractor, AstroForObservationPrediction, ObservationNameError
from modeling_astro.convert_original import OriginalCheckpointError, convert_original_checkpoint
from modeling_astro.data_collator_astro import AstroDataCollator
from modeling_astro.evaluation import load_split_tables
from modeling_astro.feature_extraction_astro import (
    MAX_STANDARDISED_VALUE,
    InvalidValueWarning,
    UnknownColumnsWarning,
)
from modeling_astro.inference import AstroPredictor

pytestmark = pytest.mark.usefixtures("one_torch_thread")

XP_DIR = SHARED_DATA / "gaia_archive_samples" / "xp_continuous"
XP_CSV = XP_DIR / "XP_CONTINUOUS_RAW_with_missing_BP.csv"
XP_ECSV = XP_DIR / "XP_CONTINUOUS_RAW_with_missing_BP.ecsv"
XP_FITS = XP_DIR / "XP_CONTINUOUS_RAW_with_missing_BP.fits"
ORIGINAL = SHARED_DATA / "original_checkpoint" / "tiny_random"
FITTED = ("bprp", "jh", "jk", "teff", "logg", "m_h", "g_fakemag")


def x(**changes) -> dict[str, np.ndarray]:
    """The issue's clean star: BP-RP 1, J-H 0.5, J-K 0.6 (one star), with `changes` applied."""
    star = {"bprp": np.r_[1.0], "jh": np.r_[0.5], "jk": np.r_[0.6]}
    star.update({key: np.atleast_1d(np.asarray(value)) for key, value in changes.items()})
    return star


def stars(num_stars: int = 5, seed: int = 0) -> pd.DataFrame:
    """Physical-looking stars with every fitted observation and its error."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "bprp": rng.normal(1.2, 0.3, num_stars),
            "jh": rng.normal(0.5, 0.1, num_stars),
            "jk": rng.normal(0.6, 0.1, num_stars),
            "teff": rng.normal(4800.0, 500.0, num_stars),
            "logg": rng.normal(2.5, 0.8, num_stars),
        }
    )
    for name in list(frame.columns):
        frame[name + "_err"] = np.abs(rng.normal(0.02, 0.005, num_stars)) * frame[name].abs().clip(lower=0.1)
    return frame


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny model and a tokenizer fitted on physical values, saved as a checkpoint folder."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("fuzz_model")
    config = tiny_config(encoder_dropout=0.0, decoder_dropout=0.0)
    AstroForObservationPrediction(config).save_pretrained(folder)
    rng = np.random.default_rng(1)
    fit_data = {
        "bprp": rng.normal(1.2, 0.3, 500),
        "jh": rng.normal(0.5, 0.1, 500),
        "jk": rng.normal(0.6, 0.1, 500),
        "teff": rng.normal(4800.0, 600.0, 500),
        "logg": rng.normal(2.5, 0.9, 500),
        "m_h": rng.normal(-0.2, 0.3, 500),
        "g_fakemag": rng.lognormal(3.0, 0.5, 500),
    }
    AstroFeatureExtractor(context_length=config.context_length).fit(fit_data, FITTED).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def P(model_dir) -> AstroPredictor:
    return AstroPredictor.from_pretrained(str(model_dir), device="cpu", batch_size=8)


def predict_quietly(P, data, request=("teff",), **kwargs) -> pd.DataFrame:
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnknownColumnsWarning)
        warnings.simplefilter("error", InvalidValueWarning)
        return P.predict(data, list(request), **kwargs)


# ------------------------------------------------------------------------------------------------------------------
# issue 18, silent wrong answers
def test_case01_huge_value_is_an_error_naming_the_observation(P):
    with pytest.raises(ValueError, match=r"'bprp'.*far outside the tokenizer's range.*row 0: 1e\+30"):
        P.predict(x(bprp=1e30), ["teff"])


def test_case01_value_beyond_float32_is_an_error_not_nan(P):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no numpy "overflow encountered in cast"
        with pytest.raises(ValueError, match=r"'bprp'.*far outside"):
            P.predict(x(bprp=1e39), ["teff"], n_samples=16)


def test_case01_infinite_error_with_sampling_is_an_error(P):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises(ValueError, match=r"'jh_err'.*infinite or huge 1-sigma error"):
            P.predict(x(jh_err=np.inf), ["teff"], n_samples=16)


def test_case01_mask_policy_drops_the_huge_value_with_a_warning(P):
    without = predict_quietly(P, {"jh": np.r_[0.5], "jk": np.r_[0.6]})
    with pytest.warns(InvalidValueWarning, match=r"'bprp'.*treated as missing"):
        masked = P.predict(x(bprp=1e30), ["teff"], invalid="mask")
    assert np.isfinite(masked.to_numpy()).all()
    pd.testing.assert_frame_equal(masked, without)


def test_case02_negative_error_is_an_error_naming_the_column(P):
    with pytest.raises(ValueError, match=r"'jh_err'.*negative 1-sigma error.*-9999"):
        P.predict(x(jh_err=-9999.0), ["teff"], n_samples=16)


def test_case02_negative_error_masked_is_unknown_not_sigma_9999(P):
    unknown = predict_quietly(P, x(jh_err=np.nan), n_samples=16)
    with pytest.warns(InvalidValueWarning, match=r"'jh_err'.*negative 1-sigma error.*errors treated as unknown"):
        masked = P.predict(x(jh_err=-9999.0), ["teff"], n_samples=16, invalid="mask")
    pd.testing.assert_frame_equal(masked, unknown)
    wide = predict_quietly(P, x(jh_err=9.0), n_samples=16)  # what sigma = 9999-like noise would have given
    assert not np.allclose(wide.to_numpy(), masked.to_numpy())


@pytest.mark.parametrize("column, meant", [("Teff", "teff"), ("LOGG", "logg"), ("TEFF_ERR", "teff_err")])
def test_case03_wrongly_cased_columns_are_an_error_saying_did_you_mean(P, column, meant):
    with pytest.raises(ObservationNameError, match=rf"{column!r}.*case-sensitive.*Did you mean {meant!r}"):
        P.predict({**x(), column: np.r_[4800.0]}, ["m_h"])


def test_case03_gaia_style_error_columns_are_read(P):
    err = predict_quietly(P, x(jh_err=0.05, bprp_err=0.02), n_samples=16)
    error = predict_quietly(P, x(jh_error=0.05, bprp_error=0.02), n_samples=16)
    none = predict_quietly(P, x(), n_samples=16)
    pd.testing.assert_frame_equal(error, err)
    assert not np.allclose(err.to_numpy(), none.to_numpy())  # the errors were used


def test_case03_err_and_error_columns_together_are_an_error(P):
    with pytest.raises(ValueError, match=r"\['jh_err', 'jh_error'\].*keep one"):
        P.predict(x(jh_err=0.05, jh_error=0.05), ["teff"], n_samples=16)


def test_case03_misspelt_errors_key_is_an_error_with_suggestion(P):
    with pytest.raises(ObservationNameError, match=r"'jhh'.*Did you mean 'jh'"):
        P.predict(x(), ["teff"], errors={"jhh": np.r_[0.05]}, n_samples=16)


def test_case03_errors_key_without_its_observation_is_an_error(P):
    with pytest.raises(ValueError, match=r"`errors` gives errors of 'teff'.*not among the observations"):
        P.predict(x(), ["logg"], errors={"teff": np.r_[50.0]}, n_samples=16)


def test_case03_errors_argument_is_used(P):
    given = predict_quietly(P, x(), errors={"jh": np.r_[0.05]}, n_samples=16)
    column = predict_quietly(P, x(jh_err=0.05), n_samples=16)
    pd.testing.assert_frame_equal(given, column)


def test_case03_unknown_columns_are_reported(P):
    with pytest.warns(UnknownColumnsWarning, match=r"\['ra', 'dec'\]"):
        table = P.predict({**x(), "ra": np.r_[10.0], "dec": np.r_[-5.0]}, ["teff"])
    pd.testing.assert_frame_equal(table, predict_quietly(P, x()))


def test_case04_qtable_in_kilokelvin_is_converted_to_kelvin(P):
    frame = stars()
    reference = predict_quietly(P, frame[["teff", "bprp"]], ["logg"])
    table = QTable({"teff": frame["teff"].to_numpy() / 1000 * u.kK, "bprp": frame["bprp"].to_numpy() * u.mag})
    np.testing.assert_allclose(predict_quietly(P, table, ["logg"]).to_numpy(), reference.to_numpy(), rtol=1e-6)
    plain = Table({"teff": frame["teff"].to_numpy() / 1000, "bprp": frame["bprp"].to_numpy()})
    plain["teff"].unit = "kK"
    np.testing.assert_allclose(predict_quietly(P, plain, ["logg"]).to_numpy(), reference.to_numpy(), rtol=1e-6)


def test_case04_unconvertible_unit_is_an_error_naming_the_column(P):
    table = QTable({"teff": [4.8] * u.m, "bprp": [1.0] * u.mag})
    with pytest.raises(ValueError, match=r"Column 'teff' has unit m, which cannot be converted to K"):
        P.predict(table, ["logg"])


def test_case05_series_is_one_star(P):
    frame = stars()
    one = predict_quietly(P, frame.iloc[0], ["m_h"])
    assert len(one) == 1
    np.testing.assert_array_equal(one.to_numpy(), predict_quietly(P, frame.iloc[[0]], ["m_h"]).to_numpy())


def _dataset_folder(root: Path, shards: dict[str, list[pd.DataFrame]]) -> Path:
    (root / "data").mkdir(parents=True)
    (root / "README.md").write_text("# a dataset\n")
    for split, frames in shards.items():
        for i, frame in enumerate(frames):
            frame.to_parquet(root / "data" / f"{split}-{i:05d}-of-{len(frames):05d}.parquet")
    return root


def test_case06_one_train_shard_without_teff_is_an_error_naming_the_shard(tmp_path):
    full = pd.DataFrame({"source_id": [1, 2], "bprp": [1.0, 1.1], "teff": [4800.0, 5000.0]})
    folder = _dataset_folder(
        tmp_path / "ds", {"train": [full, full.drop(columns="teff")], "validation": [full], "test": [full]}
    )
    with pytest.raises(ValueError, match=r"'train' split .* lacks required column\(s\) \['teff'\] in .*train-00001"):
        load_split_tables(str(folder), required=("source_id", "bprp", "teff"))
    complete = _dataset_folder(tmp_path / "ok", {"train": [full, full], "validation": [full], "test": [full]})
    assert not load_split_tables(str(complete), required=("teff",))["train"]["teff"].isna().any()


def _original_copy(tmp_path: Path, change) -> Path:
    folder = tmp_path / "original"
    shutil.copytree(ORIGINAL, folder)
    checkpoint = torch.load(folder / "weights.pt", map_location="cpu", weights_only=True)
    torch.save(change(checkpoint), folder / "weights.pt")
    return folder


def test_case07_nan_in_original_weights_is_refused(tmp_path):
    def poison(checkpoint):
        checkpoint["model_state_dict"]["torch_decoder.decoder_out.weight"][0, 0] = float("nan")
        return checkpoint

    folder = _original_copy(tmp_path, poison)
    with pytest.raises(OriginalCheckpointError, match=r"weights.pt: parameter 'torch_decoder.decoder_out.weight'.*NaN"):
        convert_original_checkpoint(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------------------------
# issue 18, unhelpful crashes
def test_case09_non_numeric_string_names_column_and_row(P):
    frame = pd.DataFrame({"teff": ["5000", "abc"], "bprp": [1.0, 1.1]})
    with pytest.raises(ValueError, match=r"Column 'teff' holds a value that is not a number at row 1: 'abc'"):
        P.predict(frame, ["logg"])


def test_case10_two_dimensional_column_is_an_error_naming_it(P):
    with pytest.raises(ValueError, match=r"Column 'bprp' has shape \(1, 3\).*one value per star"):
        P.predict(x(bprp=np.ones((1, 3))), ["teff"])


def test_case10_mismatched_lengths_name_the_columns(P):
    with pytest.raises(ValueError, match=r"different lengths \('bprp' has 3, 'jh' has 2 rows\)"):
        P.tokenizer({"bprp": np.ones(3), "jh": np.ones(2)})


def test_case10_column_vectors_are_squeezed(P):
    frame = stars()
    flat = {name: frame[name].to_numpy() for name in ("bprp", "jh", "jk")}
    columns = {name: value[:, None] for name, value in flat.items()}
    pd.testing.assert_frame_equal(predict_quietly(P, columns), predict_quietly(P, flat))


def test_case10_scalars_are_one_star(P):
    scalars = predict_quietly(P, {"bprp": 1.0, "jh": 0.5, "jk": 0.6})
    pd.testing.assert_frame_equal(scalars, predict_quietly(P, x()))


def _xp_equal(a, b) -> None:
    np.testing.assert_array_equal(a.source_id, b.source_id)
    for field in ("bp_coefficients", "rp_coefficients", "bp_coefficient_errors", "bp_n_relevant_bases"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


def test_case11_gaia_bulk_ecsv_gz_reads_as_ecsv(tmp_path):
    bulk = tmp_path / "XpContinuousMeanSpectrum_000000-003111.csv.gz"
    bulk.write_bytes(gzip.compress(XP_ECSV.read_bytes()))
    xp = read_xp_continuous(bulk)
    assert len(xp) == 3 and (xp.bp_n_relevant_bases == 0).sum() == 1
    _xp_equal(xp, read_xp_continuous(XP_ECSV))
    np.testing.assert_array_equal(xp.rp_coefficients, read_xp_continuous(XP_CSV).rp_coefficients)


def test_case11_semicolon_csv_is_sniffed(tmp_path):
    path = tmp_path / "xp_semicolon.csv"
    pd.read_csv(XP_CSV).to_csv(path, sep=";", index=False)
    _xp_equal(read_xp_continuous(path), read_xp_continuous(XP_CSV))


def test_case12_vocab_size_disagreeing_with_names_is_a_clear_error(tmp_path, model_dir):
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["vocab_size"] = 200
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"vocab_size 200 but lists 118 observation_names.*config.json"):
        AstroPredictor.from_pretrained(str(folder))


def test_case12_truncated_safetensors_names_the_file(tmp_path, model_dir):
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(OSError, match=r"model.safetensors: the weights file is truncated or corrupt.*again"):
        AstroPredictor.from_pretrained(str(folder))


def test_case13_missing_original_parameter_is_named_with_the_file(tmp_path):
    def drop(checkpoint):
        del checkpoint["model_state_dict"]["embedding_layer.embeddings"]
        return checkpoint

    folder = _original_copy(tmp_path, drop)
    with pytest.raises(OriginalCheckpointError, match=r"weights.pt: parameter 'embedding_layer.embeddings' is missing"):
        convert_original_checkpoint(folder, tmp_path / "out")


def test_case13_missing_block_parameter_is_named_as_the_original_calls_it(tmp_path):
    name = "torch_encoder.encoder_transformer_block_2.dense_1.weight"

    def drop(checkpoint):
        del checkpoint["model_state_dict"][name]
        return checkpoint

    with pytest.raises(OriginalCheckpointError, match=rf"parameter {name!r} is missing"):
        convert_original_checkpoint(_original_copy(tmp_path, drop), tmp_path / "out")


def test_case13_bare_state_dict_converts_like_the_full_checkpoint(tmp_path):
    reference = convert_original_checkpoint(ORIGINAL, tmp_path / "reference")
    bare = convert_original_checkpoint(
        _original_copy(tmp_path, lambda checkpoint: checkpoint["model_state_dict"]), tmp_path / "bare"
    )
    for (name, a), (_, b) in zip(reference.state_dict().items(), bare.state_dict().items()):
        assert torch.equal(a, b), name


# ------------------------------------------------------------------------------------------------------------------
# our own corpus: tables
@pytest.mark.parametrize(
    "column, match",
    [
        (np.array([True, False]), "booleans"),
        (np.array([1 + 2j, 3j]), "dtype complex128"),
        (np.array(["2020-01-01", "2020-01-02"], dtype="datetime64[D]"), "dtype datetime64"),
        (pd.Series([[1.0, 2.0], [3.0, 4.0]]), "holds arrays"),
    ],
    ids=["bool", "complex", "datetime", "array_cells"],
)
def test_fuzz_non_real_dtypes_name_the_column(P, column, match):
    with pytest.raises(ValueError, match=rf"Column 'teff'.*{match}"):
        P.predict(pd.DataFrame({"teff": column, "bprp": [1.0, 1.1]}), ["logg"])


def test_fuzz_ragged_list_names_the_column(P):
    with pytest.raises(ValueError, match=r"Column 'bprp' cannot be read as an array"):
        P.predict({"bprp": [[1.0, 2.0], [3.0]], "jh": [0.5, 0.5]}, ["teff"])


def test_fuzz_scalar_beside_arrays_is_an_error(P):
    with pytest.raises(ValueError, match=r"\['jh'\] hold a single value but the others have \[2\] rows"):
        P.predict({"bprp": [1.0, 1.1], "jh": 0.5}, ["teff"])


def test_fuzz_empty_input_is_an_error(P):
    with pytest.raises(ValueError, match="no star"):
        P.predict({"bprp": np.zeros(0), "jh": np.zeros(0)}, ["teff"])
    with pytest.raises(ValueError, match="no star"):
        P.predict([], ["teff"])


def test_fuzz_missing_strings_are_missing(P):
    frame = pd.DataFrame({"bprp": ["1.0", "null", "", " NaN ", None], "jh": [0.5] * 5})
    numbers = pd.DataFrame({"bprp": [1.0, np.nan, np.nan, np.nan, np.nan], "jh": [0.5] * 5})
    pd.testing.assert_frame_equal(predict_quietly(P, frame), predict_quietly(P, numbers))


def test_fuzz_nullable_and_masked_columns_are_missing_where_masked(P):
    reference = predict_quietly(P, {"bprp": np.r_[1.0, np.nan], "jh": np.r_[0.5, 0.4]})
    nullable = pd.DataFrame({"bprp": pd.array([1.0, pd.NA], dtype="Float64"), "jh": [0.5, 0.4]})
    masked = {"bprp": np.ma.masked_array([1.0, 99.0], mask=[False, True]), "jh": np.r_[0.5, 0.4]}
    table = Table({"bprp": MaskedColumn([1.0, 99.0], mask=[False, True]), "jh": [0.5, 0.4]})
    for data in (nullable, masked, table):
        pd.testing.assert_frame_equal(predict_quietly(P, data), reference)


def test_fuzz_duplicate_column_names_are_an_error(P):
    frame = pd.DataFrame([[1.0, 1.2, 0.5]], columns=["bprp", "bprp", "jh"])
    with pytest.raises(ValueError, match=r"duplicate column names \['bprp'\]"):
        P.predict(frame, ["teff"])


def test_fuzz_wide_column_is_an_error(P):
    with pytest.raises(ValueError, match=r"Column 'jh' has shape \(2, 2\)"):
        P.predict({"bprp": np.r_[1.0, 1.1], "jh": np.ones((2, 2))}, ["teff"])


def test_fuzz_missing_keep_column_is_named(P):
    with pytest.raises(KeyError, match=r"\['source_id'\] \(in `keep_columns`\) are not in the input"):
        P.predict(x(), ["teff"], keep_columns=["source_id"])


def test_fuzz_errors_with_other_row_count_is_an_error(P):
    with pytest.raises(ValueError, match=r"`errors` has 2 rows but `data` has 1"):
        P.predict(x(), ["teff"], errors={"jh": np.r_[0.1, 0.1]}, n_samples=4)


def test_fuzz_errors_key_with_suffix_says_use_the_name(P):
    with pytest.raises(ObservationNameError, match=r"`errors` key 'jh_err'.*use 'jh'"):
        P.predict(x(), ["teff"], errors={"jh_err": np.r_[0.1]}, n_samples=4)


def test_fuzz_infinite_value_is_missing_as_documented(P):
    pd.testing.assert_frame_equal(predict_quietly(P, x(bprp=-np.inf)), predict_quietly(P, x(bprp=np.nan)))


def test_fuzz_huge_finite_error_is_an_error(P):
    with pytest.raises(ValueError, match=r"'bprp_err'.*infinite or huge"):
        P.predict(x(bprp_err=1e30), ["teff"], n_samples=4)


def test_fuzz_nan_error_is_unknown(P):
    pd.testing.assert_frame_equal(
        predict_quietly(P, x(jh_err=np.nan), n_samples=8), predict_quietly(P, x(), n_samples=8)
    )


def test_fuzz_value_just_inside_the_range_is_accepted(P):
    scale = P.tokenizer.scales[P.tokenizer.token_id("bprp") - 1]
    median = P.tokenizer.medians[P.tokenizer.token_id("bprp") - 1]
    table = predict_quietly(P, x(bprp=median + 0.99 * MAX_STANDARDISED_VALUE * scale))
    assert np.isfinite(table.to_numpy()).all()


def test_fuzz_raw_xp_coefficients_with_a_flux_unit_are_an_error(P):
    table = QTable({"bp0": [1200.0] * (u.electron / u.s), "bprp": [1.0] * u.mag})
    with pytest.raises(ValueError, match=r"Column 'bp0' has unit electron / s, which cannot be converted"):
        P.predict(table, ["teff"])


def test_fuzz_logg_in_dex_units_is_accepted(P):
    frame = stars()
    reference = predict_quietly(P, frame[["logg", "bprp"]], ["teff"])
    for unit in (u.dex, u.dex(u.cm / u.s**2)):
        table = QTable({"logg": frame["logg"].to_numpy() * unit, "bprp": frame["bprp"].to_numpy() * u.mag})
        np.testing.assert_allclose(predict_quietly(P, table, ["teff"]).to_numpy(), reference.to_numpy())


def test_fuzz_unit_on_an_observation_without_a_unit_is_an_error(P):
    table = QTable({"logebv": [-2.0] * u.mag, "bprp": [1.0] * u.mag})
    with pytest.raises(ValueError, match=r"Column 'logebv' has unit mag but the model's observation 'logebv' has no"):
        P.predict(table, ["teff"])


def test_fuzz_g_fakemag_in_arcsec_is_converted(P):
    reference = predict_quietly(P, {"g_fakemag": np.r_[25.0], "bprp": np.r_[1.0]})
    table = QTable({"g_fakemag": [0.025] * u.arcsec, "bprp": [1.0] * u.mag})
    np.testing.assert_allclose(predict_quietly(P, table).to_numpy(), reference.to_numpy(), rtol=1e-6)


def test_fuzz_iterable_dataset_points_to_predict_stream(P):
    stream = datasets.Dataset.from_dict(x()).to_iterable_dataset()
    with pytest.raises(TypeError, match="predict_stream"):
        P.predict(stream, ["teff"])


@pytest.mark.parametrize("data", ["bprp=1.0", 3.0, None], ids=["string", "number", "none"])
def test_fuzz_unsupported_containers_say_what_is_accepted(P, data):
    with pytest.raises(TypeError, match="Cannot read stars from a .*pass a dict of arrays"):
        P.predict(data, ["teff"])


def test_fuzz_other_containers_agree(P):
    frame = stars()[["bprp", "jh", "jk"]]
    reference = predict_quietly(P, frame)
    rows = frame.to_dict(orient="records")
    structured = frame.to_records(index=False)
    dataset = datasets.Dataset.from_pandas(frame)
    for data in (rows, structured, dataset, Table.from_pandas(frame)):
        pd.testing.assert_frame_equal(predict_quietly(P, data), reference)
    one = predict_quietly(P, Table.from_pandas(frame)[2])
    pd.testing.assert_frame_equal(one, reference.iloc[[2]].reset_index(drop=True))


def test_fuzz_invalid_policy_is_checked(P):
    with pytest.raises(ValueError, match=r"`invalid` must be one of \('raise', 'mask'\)"):
        P.predict(x(), ["teff"], invalid="ignore")


def test_fuzz_miscased_observation_in_a_series_is_an_error(P):
    with pytest.raises(ObservationNameError, match=r"'BPRP'.*Did you mean 'bprp'"):
        P.predict(pd.Series({"BPRP": 1.0, "jh": 0.5}), ["teff"])


def test_fuzz_series_with_text_metadata_reports_it(P):
    star = pd.Series({"name": "star A", "bprp": 1.0, "jh": 0.5, "jk": 0.6})
    with pytest.warns(UnknownColumnsWarning, match=r"\['name'\]"):
        table = P.predict(star, ["teff"])
    pd.testing.assert_frame_equal(table, predict_quietly(P, x()))


def test_fuzz_source_id_and_truth_columns_are_not_reported(P):
    data = {**x(), "source_id": np.r_[2**60], "true_teff": np.r_[4800.0]}
    pd.testing.assert_frame_equal(predict_quietly(P, data), predict_quietly(P, x()))


def test_fuzz_error_row_numbers_count_across_chunks(model_dir):
    predictor = AstroPredictor.from_pretrained(str(model_dir), device="cpu", batch_size=1)
    frame = pd.DataFrame({"bprp": np.ones(40), "jh": np.full(40, 0.5)})
    frame.loc[37, "jh"] = 1e30  # the 3rd chunk of 16 stars
    with pytest.raises(ValueError, match=r"'jh'.*first at row 37"):
        predictor.predict(frame, ["teff"])


# our own corpus: tokenizer fit and collator (training data)
def test_fuzz_fit_with_text_names_the_column():
    with pytest.raises(ValueError, match=r"Column 'teff' holds a value that is not a number at row 2: 'n/a K'"):
        AstroFeatureExtractor().fit(pd.DataFrame({"teff": ["4800", "5000", "n/a K"]}))


def test_fuzz_collator_rows_with_text_name_the_column(model_dir):
    collator = AstroDataCollator(AstroFeatureExtractor.from_pretrained(model_dir), seed=0)
    rows = [{"teff": 4800.0, "logg": 2.5, "bprp": 1.0}, {"teff": "hot", "logg": 2.4, "bprp": 1.1}]
    with pytest.raises(ValueError, match=r"Column 'teff' holds a value that is not a number at row 1: 'hot'"):
        collator(rows)


def test_fuzz_collator_negative_error_is_an_error(model_dir):
    collator = AstroDataCollator(AstroFeatureExtractor.from_pretrained(model_dir), seed=0)
    rows = [{"teff": 4800.0, "teff_err": -9999.0, "logg": 2.5, "bprp": 1.0}]
    with pytest.raises(ValueError, match=r"'teff_err'.*negative"):
        collator(rows)


# our own corpus: readers
def test_fuzz_tab_separated_csv_is_sniffed(tmp_path):
    path = tmp_path / "xp.csv"
    pd.read_csv(XP_CSV).to_csv(path, sep="\t", index=False)
    _xp_equal(read_xp_continuous(path), read_xp_continuous(XP_CSV))


def test_fuzz_gzipped_csv_without_gz_extension_is_read(tmp_path):
    path = tmp_path / "xp.csv"
    path.write_bytes(gzip.compress(XP_CSV.read_bytes()))
    _xp_equal(read_xp_continuous(path), read_xp_continuous(XP_CSV))


def test_fuzz_ecsv_named_csv_is_read_as_ecsv(tmp_path):
    path = tmp_path / "xp.csv"
    shutil.copy(XP_ECSV, path)
    _xp_equal(read_xp_continuous(path), read_xp_continuous(XP_ECSV))


def test_fuzz_fits_named_csv_is_read_as_fits(tmp_path):
    path = tmp_path / "xp.csv"
    shutil.copy(XP_FITS, path)
    _xp_equal(read_xp_continuous(path), read_xp_continuous(XP_FITS))


def test_fuzz_truncated_gzip_names_the_file(tmp_path):
    path = tmp_path / "XpContinuousMeanSpectrum_000000-003111.csv.gz"
    data = gzip.compress(XP_ECSV.read_bytes())
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(DatasetBuildError, match=rf"{path.name}.*(truncated|damaged)"):
        read_xp_continuous(path)


def test_fuzz_not_gzip_named_gz_names_the_file(tmp_path):
    path = tmp_path / "xp.csv.gz"
    path.write_bytes(b"\x00\x01binary garbage" * 50)
    with pytest.raises(DatasetBuildError, match=rf"{path.name}"):
        read_xp_continuous(path)


def test_fuzz_empty_file_names_the_file(tmp_path):
    path = tmp_path / "gaia_source.csv"
    path.write_bytes(b"")
    with pytest.raises(DatasetBuildError, match=rf"{path.name}"):
        read_gaia_source(path)


def test_fuzz_null_array_cells_are_a_missing_band(tmp_path):
    frame = pd.read_csv(XP_CSV)
    frame.loc[0, ["bp_coefficients", "bp_coefficient_errors"]] = "null"
    path = tmp_path / "xp.csv"
    frame.to_csv(path, index=False)
    xp = read_xp_continuous(path)
    assert np.isnan(xp.bp_coefficients[0]).all() and xp.bp_n_relevant_bases[0] == 0
    assert np.isfinite(xp.rp_coefficients[0]).all()


def test_fuzz_semicolon_gaia_source_with_null_cells(tmp_path):
    columns = list(GAIA_SOURCE_REQUIRED)  # source_id first, astrometric_params_solved last
    assert columns[0] == "source_id" and columns[-1] == "astrometric_params_solved" and len(columns) == 11
    lines = [";".join(columns), ";".join(["1"] + ["1.5"] * 9 + ["31"]), ";".join(["2"] + ["null"] * 9 + ["95"])]
    path = tmp_path / "gaia_source.csv"
    path.write_text("\n".join(lines) + "\n")
    frame = read_gaia_source(path)
    assert list(frame["source_id"]) == [1, 2] and frame.loc[1, "parallax"] != frame.loc[1, "parallax"]
    assert frame.loc[0, "parallax"] == 1.5


# our own corpus: checkpoints
def test_fuzz_infinite_weight_names_the_parameter(tmp_path, model_dir):
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    weights = load_file(folder / "model.safetensors")
    weights["head.mean.bias"][0] = float("inf")
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"model.safetensors: parameter 'head.mean.bias' holds 1 NaN/inf"):
        AstroPredictor.from_pretrained(str(folder))


def test_fuzz_empty_safetensors_names_the_file(tmp_path, model_dir):
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(OSError, match=r"model.safetensors: the weights file is truncated or corrupt"):
        AstroPredictor.from_pretrained(str(folder))


def test_fuzz_config_names_not_matching_weights_is_a_clear_error(tmp_path, model_dir):
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["observation_names"] = config["observation_names"][:-1]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"model.safetensors: the weights' shapes do not match the config.json"):
        AstroForObservationPrediction.from_pretrained(folder)


def test_fuzz_missing_weights_file_names_the_folder(tmp_path, model_dir):
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(OSError, match=rf"{folder.name}"):
        AstroPredictor.from_pretrained(str(folder))


def test_fuzz_original_missing_weights_file(tmp_path):
    folder = tmp_path / "original"
    shutil.copytree(ORIGINAL, folder)
    (folder / "weights.pt").unlink()
    with pytest.raises(OriginalCheckpointError, match=r"weights.pt: no such file"):
        convert_original_checkpoint(folder, tmp_path / "out")


def test_fuzz_original_garbage_weights_file(tmp_path):
    folder = tmp_path / "original"
    shutil.copytree(ORIGINAL, folder)
    (folder / "weights.pt").write_bytes(b"not a torch file")
    with pytest.raises(OriginalCheckpointError, match=r"weights.pt: cannot be read as a torch checkpoint"):
        convert_original_checkpoint(folder, tmp_path / "out")


def test_fuzz_original_unexpected_parameter_is_named(tmp_path):
    def extra(checkpoint):
        checkpoint["model_state_dict"]["torch_decoder.extra_layer.weight"] = torch.zeros(2)
        return checkpoint

    with pytest.raises(OriginalCheckpointError, match=r"weights.pt: unexpected parameter 'torch_decoder.extra_layer"):
        convert_original_checkpoint(_original_copy(tmp_path, extra), tmp_path / "out")


def test_fuzz_original_config_not_matching_weights_is_named(tmp_path):
    folder = tmp_path / "original"
    shutil.copytree(ORIGINAL, folder)
    config = json.loads((folder / "config.json").read_text())
    config["nn_config"]["encoder_dense_num"] = 2 * config["nn_config"]["encoder_dense_num"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(OriginalCheckpointError, match=r"weights.pt: parameter 'astro.encoder.0.fc1.weight' has shape"):
        convert_original_checkpoint(folder, tmp_path / "out")


def test_fuzz_original_infinite_weight_is_refused(tmp_path):
    def poison(checkpoint):
        checkpoint["model_state_dict"]["embedding_layer.bias"][3, 0] = float("-inf")
        return checkpoint

    with pytest.raises(OriginalCheckpointError, match=r"'embedding_layer.bias' holds 1 NaN/inf"):
        convert_original_checkpoint(_original_copy(tmp_path, poison), tmp_path / "out")


def test_fuzz_nan_outputs_of_a_broken_model_are_not_called_missing_inputs(P):
    model = AstroForObservationPrediction(P.model.config)
    model.load_state_dict(P.model.state_dict())
    with torch.no_grad():
        model.head.mean.bias.fill_(float("nan"))
    broken = AstroPredictor(model, P.tokenizer, device="cpu", attn_implementation="sdpa")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = broken.predict({"bprp": np.r_[1.0, np.nan], "jh": np.r_[0.5, np.nan]}, ["teff"])
    messages = [str(w.message) for w in caught]
    assert table["teff"].isna().all()
    assert any("non-finite outputs for 1 star(s) with observations (first at row 0)" in m for m in messages)
    assert any("1 star(s) (first at row 1) have no usable observation" in m for m in messages)


def test_fuzz_error_column_without_its_observation_is_reported(P):
    with pytest.warns(UnknownColumnsWarning, match=r"\['teff_err'\]"):
        table = P.predict({**x(), "teff_err": np.r_[50.0]}, ["logg"])
    pd.testing.assert_frame_equal(table, predict_quietly(P, x(), ["logg"]))
