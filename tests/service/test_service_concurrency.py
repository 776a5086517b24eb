"""200 concurrent predictions: all acknowledged, each persisted exactly once."""

from __future__ import annotations

import asyncio

import httpx2
import psycopg
from service_support import IRIS_INPUT

from service.app import create_app
from service.config import Settings


def test_200_concurrent_predictions(settings: Settings, db: psycopg.Connection) -> None:
    app = create_app(settings)

    async def fire() -> list[httpx2.Response]:
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://test") as client:
            responses = await asyncio.gather(
                *(
                    client.post(
                        "/v1/models/iris/predict",
                        json={"inputs": [{**IRIS_INPUT, "sepal_length_cm": 4 + i / 100}]},
                        headers={"X-Request-ID": f"concurrent-{i}"},
                    )
                    for i in range(200)
                )
            )
        await app.state.prediction_writer.close()  # no lifespan under ASGITransport
        return responses

    responses = asyncio.run(fire())
    app.state.engine.dispose()
    assert [response.status_code for response in responses] == [200] * 200
    acknowledged = {response.json()["predictions"][0]["id"] for response in responses}
    assert len(acknowledged) == 200
    rows = db.execute("SELECT id::text, request_id FROM predictions").fetchall()
    assert len(rows) == 200
    assert {row[0] for row in rows} == acknowledged
    assert {row[1] for row in rows} == {f"concurrent-{i}" for i in range(200)}
