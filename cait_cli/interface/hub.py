"""`cait push`: upload a compressed checkpoint and its model card to the Hugging Face Hub."""
from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from ..atomic import atomic_directory
from ..errors import CaitError, first_line, is_network_error
from ..models.checkpoint import CONFIG_NAME, WEIGHTS_NAME, read_config
from ..pipeline.reports.compress import CompressReport
from ..pipeline.reports.export import ExportReport, OnnxCheck
from .card import model_card

REPORT_NAME = "report.json"
ONNX_NAME = "model.onnx"
INT8_NAME = "model.int8.onnx"
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")


@dataclass
class PushResult:
    repo_id: str
    files: List[str]
    dry_run: bool
    revision: Optional[str] = None
    url: Optional[str] = None  # the commit on the Hub, or the preview folder of a dry run
    private: bool = False


def stage(directory: Path, repo_id: str, into: Path, with_onnx: bool = False, quantize: Optional[str] = None,
          data: Optional[str] = None) -> List[str]:
    """Copy what will be uploaded into `into`: the checkpoint files, model.onnx if asked (exported
    here, so it holds exactly these weights), model.int8.onnx with `quantize` (calibrated and
    checked on `data`) and a generated README.md."""
    config = read_config(directory)
    report = read_report(directory)
    names = [CONFIG_NAME, WEIGHTS_NAME] + ([REPORT_NAME] if report is not None else [])
    for name in names:
        shutil.copy2(directory / name, into / name)
    onnx = _export_onnx(directory, into / ONNX_NAME) if with_onnx else None
    quantized = _export_int8(directory, into / INT8_NAME, quantize, data) if quantize else None
    (into / "README.md").write_text(model_card(config, report, repo_id, onnx, quantized))
    return sorted(names + ["README.md"] + ([ONNX_NAME] if onnx else []) + ([INT8_NAME] if quantized else []))


def read_report(directory: Path) -> Optional[CompressReport]:
    """The checkpoint's report.json (None without one); CaitError if it is not a report cait wrote."""
    path = directory / REPORT_NAME
    if not path.is_file():
        return None
    try:
        return CompressReport.from_json(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise CaitError(f"{path} is not a report cait compress wrote ({type(err).__name__}: {err}); "
                        "move it away to push without it") from err


def _export_onnx(directory: Path, out: Path) -> OnnxCheck:
    """model.onnx with a dynamic batch, checked against PyTorch; what the card says of it."""
    from ..pipeline.export.onnx_export import ExportConfig, export_file

    return export_file(ExportConfig(model=str(directory), out=out, dynamic_batch=True))[1]


def _export_int8(directory: Path, out: Path, quantize: str, data: Optional[str]) -> ExportReport:
    """model.int8.onnx (dynamic batch), refused if it falls below fp32 (see `cait export --quantize`);
    its export report, for the card to state its accuracy and speed as measured."""
    from ..pipeline.export.onnx_export import ExportConfig, export

    return export(ExportConfig(model=str(directory), out=out, dynamic_batch=True, quantize=quantize, data=data))


def push(directory: str | Path, repo_id: str, *, private: bool = False, revision: Optional[str] = None,
         token: Optional[str] = None, dry_run: bool = False, dry_run_out: Optional[Path] = None,
         commit_message: Optional[str] = None, endpoint: Optional[str] = None,
         with_onnx: bool = False, quantize: Optional[str] = None, data: Optional[str] = None) -> PushResult:
    """Upload `directory` to `repo_id` (created if missing), or preview it with dry_run.

    with_onnx: also export and upload model.onnx (needs the onnx extra); quantize="int8" with it:
    also model.int8.onnx, calibrated and checked on `data` (dynamic quantization without).
    """
    directory = Path(directory)
    read_config(directory)  # refuses anything that is not a compressed checkpoint
    if quantize and not with_onnx:
        raise CaitError("--quantize adds an int8 ONNX file to --with-onnx; pass both")
    if not REPO_ID.match(repo_id):
        raise CaitError(f"{repo_id!r} is not a Hub repository id; use ORG/NAME, e.g. my-org/deit-small-cait")
    if dry_run:
        out = Path(dry_run_out or directory.parent / f"{directory.name}.push-preview")
        with atomic_directory(out, overwrite=True) as tmp:
            files = stage(directory, repo_id, tmp, with_onnx, quantize, data)
        return PushResult(repo_id, files, True, revision, str(out), private)
    token = token or _stored_token()
    with tempfile.TemporaryDirectory() as tmp:
        files = stage(directory, repo_id, Path(tmp), with_onnx, quantize, data)
        url = _upload(Path(tmp), repo_id, token, private, revision, commit_message, endpoint)
    return PushResult(repo_id, files, False, revision, url, private)


def _stored_token() -> str:
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise CaitError("no Hugging Face token found: run `hf auth login`, or set HF_TOKEN")
    return token


def _upload(folder: Path, repo_id: str, token: str, private: bool, revision: Optional[str],
            message: Optional[str], endpoint: Optional[str]) -> str:
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision,
                                 commit_message=message or "Upload model compressed with cait")
    except Exception as err:  # the Hub client raises many types; each becomes one line
        raise CaitError(explain_hub_error(err, repo_id, api.endpoint)) from err
    return getattr(info, "commit_url", None) or str(info)


def explain_hub_error(err: Exception, repo_id: str, endpoint: str) -> str:
    status = _status(err)
    if status == 401:
        return f"the Hub at {endpoint} refused the token (401): it is invalid or expired; log in again"
    if status == 403:
        return f"the token may not write to {repo_id} (403): check the organisation and the token's write access"
    if status == 404:
        return f"{repo_id} or its revision was not found on the Hub (404)"
    if status is not None:
        return f"the Hub answered {status} for {repo_id}: {first_line(err)}"
    if is_network_error(err):
        return f"cannot reach the Hub at {endpoint}: check the connection, or HF_ENDPOINT"
    return f"upload of {repo_id} failed: {first_line(err)}"


def _status(err: BaseException) -> Optional[int]:
    response = getattr(err, "response", None)
    code = getattr(response, "status_code", None)
    return int(code) if isinstance(code, int) else None
