"""The stand-in model server, exercised through the real openai client and the Agents SDK."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import openai
import pytest
from agents import (
    Agent,
    Model,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    RawResponsesStreamEvent,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from openai.types.responses import ResponseTextDeltaEvent
from pydantic import BaseModel

from agentmesh.model_server import DEFAULT_MODEL, ModelServer, Reply, ToolCall

API_KEY = "sk-stand-in-test"

# The SDK would otherwise export traces to api.openai.com.
set_tracing_disabled(True)

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture
async def server() -> AsyncIterator[ModelServer]:
    async with ModelServer(api_key=API_KEY) as s:
        yield s


@pytest.fixture
async def client(server: ModelServer) -> AsyncIterator[openai.AsyncOpenAI]:
    # Strict validation makes the client reject any payload that does not match its types.
    async with openai.AsyncOpenAI(
        base_url=server.base_url, api_key=API_KEY, max_retries=0, _strict_response_validation=True
    ) as c:
        yield c


# --- raw openai client ------------------------------------------------------------------------


async def test_lists_models(client: openai.AsyncOpenAI) -> None:
    page = await client.models.list()
    assert [m.id for m in page.data] == [DEFAULT_MODEL]


async def test_chat_completion_echoes_and_records_request(
    server: ModelServer, client: openai.AsyncOpenAI
) -> None:
    completion = await client.chat.completions.create(
        model="my-model", messages=[{"role": "user", "content": "hello there"}]
    )
    assert completion.choices[0].message.content == "stand-in reply to: hello there"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "my-model"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (2, 5)

    [request] = server.requests
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.body is not None and request.body["model"] == "my-model"


async def test_streamed_chat_completion(server: ModelServer, client: openai.AsyncOpenAI) -> None:
    server.enqueue(Reply(text="the quick  brown fox"))
    stream = await client.chat.completions.create(
        model=DEFAULT_MODEL,
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "the quick  brown fox"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    assert chunks[-2].choices[0].finish_reason == "stop"
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert usage.completion_tokens == 4


async def test_chat_completion_tool_call_from_script(
    server: ModelServer, client: openai.AsyncOpenAI
) -> None:
    server.enqueue(Reply(tool_calls=[ToolCall("get_weather", {"city": "Paris"})]))
    completion = await client.chat.completions.create(
        model=DEFAULT_MODEL,
        messages=[{"role": "user", "content": "weather?"}],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}


async def test_streamed_chat_tool_call_from_rule(client: openai.AsyncOpenAI) -> None:
    # No script: the user names the tool and gives its arguments.
    stream = await client.chat.completions.create(
        model=DEFAULT_MODEL,
        messages=[{"role": "user", "content": 'please get_weather {"city": "Oslo, Norway"}'}],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        stream=True,
    )
    names, arguments, finish = [], "", None
    async for chunk in stream:
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        for delta in choice.delta.tool_calls or []:
            if delta.function and delta.function.name:
                names.append(delta.function.name)
            arguments += (delta.function.arguments or "") if delta.function else ""
    assert names == ["get_weather"]
    assert json.loads(arguments) == {"city": "Oslo, Norway"}
    assert finish == "tool_calls"


async def test_responses_non_streaming(client: openai.AsyncOpenAI) -> None:
    response = await client.responses.create(
        model=DEFAULT_MODEL, instructions="be brief", input="what is up"
    )
    assert response.status == "completed"
    assert response.output_text == "stand-in reply to: what is up"
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (5, 6)


async def test_responses_streaming(server: ModelServer, client: openai.AsyncOpenAI) -> None:
    server.enqueue(Reply(text="two words", tool_calls=[ToolCall("lookup", {"q": "x"})]))
    stream = await client.responses.create(model=DEFAULT_MODEL, input="go", stream=True)
    events = [event async for event in stream]
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",  # '{"q": "x"}' comes in two pieces
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "two words"
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.output_text == "two words"
    call = completed.response.output[1]
    assert call.type == "function_call" and call.name == "lookup"
    assert json.loads(call.arguments) == {"q": "x"}
    assert completed.response.usage is not None


async def test_wrong_api_key_is_rejected(server: ModelServer) -> None:
    async with openai.AsyncOpenAI(
        base_url=server.base_url, api_key="sk-wrong", max_retries=0
    ) as client:
        with pytest.raises(openai.AuthenticationError) as excinfo:
            await client.chat.completions.create(
                model=DEFAULT_MODEL, messages=[{"role": "user", "content": "hi"}]
            )
    assert excinfo.value.status_code == 401
    assert excinfo.value.code == "invalid_api_key"
    assert server.requests[-1].headers["Authorization"] == "Bearer sk-wrong"


async def test_delay_is_applied(server: ModelServer, client: openai.AsyncOpenAI) -> None:
    server.delay_s = 0.2
    started = time.perf_counter()
    await client.responses.create(model=DEFAULT_MODEL, input="hi")
    assert time.perf_counter() - started >= 0.2


# --- Agents SDK -------------------------------------------------------------------------------


def _weather_agent(model: Model, calls: list[str]) -> Agent:
    @function_tool
    def get_weather(city: str) -> str:
        """Weather for a city."""
        calls.append(city)
        return f"sunny in {city}"

    return Agent(
        name="weather", instructions="Answer weather questions.", tools=[get_weather], model=model
    )


async def test_agent_chat_completions_tool_round_trip(
    server: ModelServer, client: openai.AsyncOpenAI
) -> None:
    server.enqueue(
        Reply(tool_calls=[ToolCall("get_weather", {"city": "Paris"})]),
        Reply(text="It is sunny in Paris."),
    )
    calls: list[str] = []
    agent = _weather_agent(
        OpenAIChatCompletionsModel(model="gpt-stand-in", openai_client=client), calls
    )
    result = await Runner.run(agent, "Weather in Paris?")
    assert calls == ["Paris"]
    assert result.final_output == "It is sunny in Paris."
    # The second request carried the tool's result back to the model.
    second = server.requests[-1].body or {}
    assert second["model"] == "gpt-stand-in"
    assert second["messages"][-1] == {
        "role": "tool",
        "tool_call_id": second["messages"][-2]["tool_calls"][0]["id"],
        "content": "sunny in Paris",
    }


async def test_agent_responses_tool_round_trip_by_rules(client: openai.AsyncOpenAI) -> None:
    # No script: the rules call the named tool, then quote its output.
    calls: list[str] = []
    agent = _weather_agent(OpenAIResponsesModel(model=DEFAULT_MODEL, openai_client=client), calls)
    result = await Runner.run(agent, 'get_weather {"city": "Rome"}')
    assert calls == ["Rome"]
    assert result.final_output == "stand-in reply: get_weather returned sunny in Rome"


@pytest.mark.parametrize("api", ["chat_completions", "responses"])
async def test_agent_run_streamed_collects_text_deltas(
    api: str, server: ModelServer, client: openai.AsyncOpenAI
) -> None:
    server.enqueue(
        Reply(tool_calls=[ToolCall("get_weather", {"city": "Lima"})]),
        Reply(text="Lima is sunny today."),
    )
    model: Model = (
        OpenAIChatCompletionsModel(model=DEFAULT_MODEL, openai_client=client)
        if api == "chat_completions"
        else OpenAIResponsesModel(model=DEFAULT_MODEL, openai_client=client)
    )
    calls: list[str] = []
    result = Runner.run_streamed(_weather_agent(model, calls), "Weather in Lima?")
    deltas = [
        event.data.delta
        async for event in result.stream_events()
        if isinstance(event, RawResponsesStreamEvent)
        and isinstance(event.data, ResponseTextDeltaEvent)
    ]
    assert calls == ["Lima"]
    assert len(deltas) > 1
    assert "".join(deltas) == "Lima is sunny today."
    assert result.final_output == "Lima is sunny today."


class Forecast(BaseModel):
    summary: str
    degrees: int


async def test_agent_structured_output_by_rules(client: openai.AsyncOpenAI) -> None:
    agent = Agent(
        name="forecaster",
        output_type=Forecast,
        model=OpenAIChatCompletionsModel(model=DEFAULT_MODEL, openai_client=client),
    )
    result = await Runner.run(agent, "forecast please")
    assert result.final_output == Forecast(summary="stand-in reply to: forecast please", degrees=0)
