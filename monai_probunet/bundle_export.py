"""The export commands of ``python -m monai_probunet.bundle``: options checked first, the file written whole.

``python -m monai.bundle onnx_export`` / ``ckpt_export`` end a missing ``--ckpt_file`` or ``--filepath`` in a
``KeyError`` traceback, export any ``--input_shape`` the network happens to run on (a 32 x 32 crop of a model
trained on 64 x 64 exports without a word), and write ``--filepath`` in place, over whatever file is there. Under
``python -m monai_probunet.bundle`` the same commands (and ``verify_net_in_out``):

* refuse, in one line (exit status 2), a missing or absent ``--config_file`` / ``--meta_file`` / ``--ckpt_file``, a
  missing ``--filepath``, and an ``--input_shape`` other than ``[B, 1, H, W]`` with ``H x W`` the model's crop
  (``infer_roi_size`` of ``model.json`` beside the weights, else the metadata's ``spatial_shape``);
* write the file through a temporary sibling moved onto ``--filepath`` only once MONAI has written it whole
  (:func:`~monai_probunet.io_utils.atomic_write`);
* replace an existing ``--filepath`` only when it is an export this command wrote: the file records
  ``written_by: monai_probunet.bundle`` (an ONNX file in its ``metadata_props``, beside the export's settings
  :data:`RECORDED_IDS`; a TorchScript file in its ``metadata.json``).
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .bundle_options import check_files, command_options, file_paths
from .bundle_utils import ConfigValueError

__all__ = [
    "EXPORT_COMMANDS",
    "RECORDED_IDS",
    "WRITTEN_BY",
    "check_export_options",
    "expected_input_shape",
    "export_settings",
    "is_project_export",
    "run_export",
]

#: the commands that write a file, with the suffix MONAI gives a ``--filepath`` without one
EXPORT_COMMANDS = {"onnx_export": ".onnx", "ckpt_export": ".ts"}
#: the commands whose options are checked here
CHECKED_COMMANDS = (*EXPORT_COMMANDS, "verify_net_in_out")
#: MONAI's own options of these commands; every other option overrides a config value
MONAI_OPTIONS = frozenset(
    ("net_id", "filepath", "ckpt_file", "meta_file", "config_file", "key_in_ckpt", "use_trace", "input_shape",
     "converter_kwargs", "args_file", "device", "p", "n", "any", "extra_forward_args")
)  # fmt: skip
#: what an export of this command records about itself
WRITTEN_BY = "monai_probunet.bundle"
#: the config values an ONNX export records in its ``metadata_props`` (JSON text): what a deployer needs to build
#: the input and read the output without the bundle's configs
RECORDED_IDS = ("export_num_samples", "export_seed", "prior_sampling", "hu_window", "infer_spacing", "infer_roi_size")


def _required(command: str, options: dict[str, Any], option: str, what: str) -> Any:
    value = options.get(option)
    if value is None or value is True or value == "":
        raise ConfigValueError(f"{command} needs --{option} {what}.")
    return value


def expected_input_shape(ckpt_file: str | None, meta_file: Any) -> tuple[int, tuple[int, ...], str] | None:
    """The input channels and the crop the exported network is to be fed, and where they come from.

    Args:
        ckpt_file: the weights; ``model.json`` beside them (when it describes them) gives the crop it was trained on.
        meta_file: the bundle's ``metadata.json`` (or a list of files): ``network_data_format.inputs.image``.

    Returns:
        ``(channels, (H, W), source)``, or ``None`` where neither says.
    """
    from .io_utils import read_json

    channels, spatial, source = 1, None, ""
    for path in reversed(file_paths(meta_file) if meta_file else []):
        try:
            image = read_json(path)["network_data_format"]["inputs"]["image"]
            channels, spatial, source = int(image["num_channels"]), tuple(image["spatial_shape"]), f"{path}"
            break
        except (OSError, ValueError, KeyError, TypeError):
            continue
    if ckpt_file:
        from .model_loading import read_model_settings

        settings = read_model_settings(ckpt_file)
        if settings and settings.get("infer_roi_size"):
            spatial, source = tuple(settings["infer_roi_size"]), f"model.json beside {ckpt_file}"
    if spatial is None:
        return None
    return channels, tuple(int(s) for s in spatial), source


def _check_input_shape(options: dict[str, Any]) -> None:
    value = options.get("input_shape")
    if value is None:
        if not options.get("meta_file"):
            raise ConfigValueError("--input_shape or --meta_file is needed: the shape of the input to export with.")
        return
    expected = expected_input_shape(options.get("ckpt_file"), options.get("meta_file"))
    channels, spatial, source = expected if expected else (1, None, "")
    want = f"[B, {channels}, {', '.join(map(str, spatial))}]" if spatial else f"[B, {channels}, H, W]"
    ok = (
        isinstance(value, (list, tuple))
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
        and len(value) == 2 + (len(spatial) if spatial else 2)
        and value[1] == channels
        and (spatial is None or tuple(value[2:]) == spatial)
    )
    if not ok:
        of = f" (the model's crop: {source})" if spatial else ""
        raise ConfigValueError(f"--input_shape {value!r}: expected {want} with B >= 1 the batch{of}.")


def is_project_export(path: str | Path) -> bool:
    """Whether ``path`` is an ONNX or TorchScript file this command wrote (it records ``written_by``)."""
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):  # TorchScript: <archive>/extra/metadata.json
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.endswith("/extra/metadata.json")]
                return bool(names) and json.loads(archive.read(names[0])).get("written_by") == WRITTEN_BY
        import onnx

        model = onnx.load_model(str(path), load_external_data=False)
        return any(p.key == "written_by" and p.value == WRITTEN_BY for p in model.metadata_props)
    except Exception:  # noqa: BLE001 -- not a file of either kind (any parser error): not ours
        return False


def check_export_options(argv: Sequence[str]) -> Path | None:
    """Refuse, in one line, what ``onnx_export``, ``ckpt_export`` or ``verify_net_in_out`` would fail on with a
    traceback or do silently wrong (see the module's docstring).

    Args:
        argv: the arguments after the program (``["onnx_export", "export_def", "--config_file", ...]``).

    Returns:
        The file an export command is to write (``--filepath``, with ``.ts`` added where MONAI adds it), else
        ``None``.

    Raises:
        ConfigValueError: naming the option, the value and what is expected.
    """
    positional, options = command_options(argv)
    if not positional or positional[0] not in CHECKED_COMMANDS:
        return None
    command = positional[0]
    configs = "\"['bundle/configs/train.yaml','bundle/configs/inference.yaml']\""
    _required(command, options, "config_file", f"FILES (e.g. {configs})")
    if command == "verify_net_in_out":
        _required(command, options, "meta_file", "FILE (bundle/configs/metadata.json: the shapes to verify)")
        check_files(options, ("config_file", "meta_file", "ckpt_file"))
        return None
    _required(command, options, "ckpt_file", "FILE (the weights to export, e.g. bundle/models/model.pt)")
    filepath = str(_required(command, options, "filepath", "FILE (where the export is written)"))
    check_files(options, ("config_file", "meta_file", "ckpt_file"))
    _check_input_shape(options)
    target = Path(filepath)
    if command == "ckpt_export" and not target.suffix:
        target = target.with_name(target.name + EXPORT_COMMANDS[command])
    if target.is_dir():
        raise ConfigValueError(f"--filepath {filepath}: is a folder; give a file name.")
    if target.exists() and not is_project_export(target):
        raise ConfigValueError(f"--filepath {target}: a file this command did not write is there; it is left "
                               "untouched: remove it yourself or give another --filepath.")  # fmt: skip
    return target


def export_settings(argv: Sequence[str]) -> dict[str, str]:
    """The values of :data:`RECORDED_IDS` of the command's configs (its overrides applied), as JSON text.

    Args:
        argv: the export command's arguments.
    """
    from monai.bundle import ConfigParser

    _, options = command_options(argv)
    parser = ConfigParser()
    parser.read_config(f=options["config_file"])
    for key, value in options.items():
        if key not in MONAI_OPTIONS and not key.startswith("_meta_"):
            parser[key] = value
    settings = {}
    for key in RECORDED_IDS:
        try:
            settings[key] = json.dumps(parser.get_parsed_content(key))
        except (KeyError, TypeError, ValueError):
            continue
    return settings


def _stamp_onnx(path: Path, settings: dict[str, str]) -> None:
    import onnx

    model = onnx.load_model(str(path))
    del model.metadata_props[:]
    for key, value in {"written_by": WRITTEN_BY, **settings}.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save_model(model, str(path))


def run_export(argv: Sequence[str], target: Path, run_monai: Callable[[list[str]], None]) -> Path:
    """Run MONAI's export command writing a temporary sibling of ``target``, mark the file as this command's and
    move it onto ``target``; on any failure (Ctrl-C included) ``target`` is as it was and no temporary file stays.

    Args:
        argv: the command's arguments (checked by :func:`check_export_options`).
        target: the file to write.
        run_monai: runs ``python -m monai.bundle`` with the arguments it is given.

    Returns:
        ``target``.
    """
    from .io_utils import atomic_write

    argv = list(argv)
    command = argv[0]

    def write(tmp: Path) -> None:
        args = _with_filepath(argv, str(tmp))
        if command == "ckpt_export":
            args += [f"--_meta_#written_by={WRITTEN_BY}"]
        run_monai(args)
        if not tmp.is_file() or tmp.stat().st_size == 0:
            raise RuntimeError(f"{command} wrote no file.")
        if command == "onnx_export":
            _stamp_onnx(tmp, export_settings(argv))

    atomic_write(target, write)
    print(f"{command}: wrote {target}", flush=True)  # MONAI's own line names the temporary file
    return target


def _with_filepath(argv: list[str], filepath: str) -> list[str]:
    out, skip = [], False
    for i, token in enumerate(argv):
        if skip:
            skip = False
            continue
        if token == "--filepath":
            out += [token, filepath]
            skip = i + 1 < len(argv)
        elif token.startswith("--filepath="):
            out.append(f"--filepath={filepath}")
        else:
            out.append(token)
    return out
