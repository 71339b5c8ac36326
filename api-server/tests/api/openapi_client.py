"""Drives a live server with the Python client generated from its OpenAPI document (no hand edits).

Usage: python openapi_client.py <client dir> <base URL> <API key> <.afps archive>
Creates an end-user, imports the example agent, starts a run for the end-user, waits for it and reads
its logs. Prints one JSON line with what it saw; any failure raises.
"""

import json
import sys

sys.path.insert(0, sys.argv[1])

from appstrate_api_client import AuthenticatedClient  # noqa: E402
from appstrate_api_client.api.end_users import create_end_user  # noqa: E402
from appstrate_api_client.api.packages import import_package  # noqa: E402
from appstrate_api_client.api.runs import get_run, get_run_logs, run_agent  # noqa: E402
from appstrate_api_client.models import (  # noqa: E402
    ArchiveUpload,
    EndUserRequest,
    ImportResult,
    Problem,
    Run,
    RunLogList,
    StartRunRequest,
    StartRunRequestInput,
)
from appstrate_api_client.types import File  # noqa: E402

_, _, base_url, api_key, archive = sys.argv

client = AuthenticatedClient(base_url=base_url, token=api_key, raise_on_unexpected_status=True)

end_user = create_end_user.sync(
    client=client, body=EndUserRequest(name="Ada Lovelace", external_id="ada-1")
)
assert not isinstance(end_user, Problem), end_user
assert end_user.id.startswith("eu_"), end_user

with open(archive, "rb") as f:
    imported = import_package.sync(
        client=client,
        body=ArchiveUpload(file=File(payload=f, file_name="hello.afps", mime_type="application/zip")),
    )
assert isinstance(imported, ImportResult), imported
assert imported.package.id == "@examples/hello", imported

run = run_agent.sync(
    client=client,
    scope="@examples",
    name="hello",
    body=StartRunRequest(input_=StartRunRequestInput.from_dict({"name": "Ada"})),
    appstrate_user=end_user.id,
)
assert isinstance(run, Run), run
assert run.status in ("pending", "running"), run

for _ in range(6):
    run = get_run.sync(client=client, id=run.id, wait="10")
    assert isinstance(run, Run), run
    if run.status not in ("pending", "running"):
        break
assert run.status == "success", run.to_dict()

logs = get_run_logs.sync(client=client, id=run.id)
assert isinstance(logs, RunLogList), logs
assert logs.data, "no log rows"

print(
    json.dumps(
        {
            "endUserId": end_user.id,
            "endUserOfRun": run.end_user_id,
            "package": imported.package.id,
            "runId": run.id,
            "status": run.status,
            "result": run.result.to_dict() if hasattr(run.result, "to_dict") else run.result,
            "logs": [row.to_dict() for row in logs.data],
        }
    )
)
