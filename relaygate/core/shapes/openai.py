"""OpenAI's request bodies as typed models: chat completions, embeddings, speech.

Each Struct follows the schema of the same name in OpenAI's OpenAPI description (CreateChatCompletionRequest,
CreateEmbeddingRequest, CreateSpeechRequest): the same fields, types and ranges, with three leniencies that
translators and OpenAI itself tolerate: an optional field may be ``null``; list lengths beyond ``minItems``
are the upstream's to judge; a tool message may carry the same content parts as a user message. Fields the
spec does not have but a translator reads (Anthropic's ``thinking`` and ``cache_control``, Gemini's
``extra_content``, Cohere's ``input_type``) are typed here too. Unknown fields pass untouched.
tests/test_shapes.py holds these models to the spec.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import Meta, Struct

Int64 = Annotated[int, Meta(ge=-(2 ** 63), le=2 ** 63 - 1)]
Penalty = Annotated[float, Meta(ge=-2, le=2)]
Object = dict[str, Any]  # a JSON object whose inside the upstream judges (a JSON schema, Anthropic's cache_control)


class Shape(Struct, forbid_unknown_fields=False):
    """Base of the request models: unknown fields are ignored (they stay in the body)."""


# ---- content parts -----------------------------------------------------------------------------------------

class TextPart(Shape, tag_field="type", tag="text"):
    text: str
    cache_control: Object | None = None  # Anthropic's prompt-caching mark, for Anthropic and Bedrock
    prompt_cache_breakpoint: Object | None = None


class ImageURL(Shape):
    url: str
    detail: str | None = None


class ImagePart(Shape, tag_field="type", tag="image_url"):
    image_url: ImageURL
    cache_control: Object | None = None
    prompt_cache_breakpoint: Object | None = None


class InputAudio(Shape):
    data: str
    format: str


class AudioPart(Shape, tag_field="type", tag="input_audio"):
    input_audio: InputAudio
    cache_control: Object | None = None
    prompt_cache_breakpoint: Object | None = None


class FileRef(Shape):
    filename: str | None = None
    file_data: str | None = None
    file_id: str | None = None


class FilePart(Shape, tag_field="type", tag="file"):
    file: FileRef
    cache_control: Object | None = None
    prompt_cache_breakpoint: Object | None = None


class RefusalPart(Shape, tag_field="type", tag="refusal"):
    refusal: str


UserPart = TextPart | ImagePart | AudioPart | FilePart
AssistantPart = TextPart | RefusalPart


# ---- messages ----------------------------------------------------------------------------------------------

class FunctionCall(Shape):
    name: str
    arguments: str


class FunctionToolCall(Shape, tag_field="type", tag="function"):
    id: str
    function: FunctionCall
    extra_content: Object | None = None  # Gemini's thought signature, sent back as it came


class CustomCall(Shape):
    name: str
    input: str


class CustomToolCall(Shape, tag_field="type", tag="custom"):
    id: str
    custom: CustomCall


class AudioRef(Shape):
    id: str


class SystemMessage(Shape, tag_field="role", tag="system"):
    content: str | list[TextPart]
    name: str | None = None
    cache_control: Object | None = None


class DeveloperMessage(Shape, tag_field="role", tag="developer"):
    content: str | list[TextPart]
    name: str | None = None
    cache_control: Object | None = None


class UserMessage(Shape, tag_field="role", tag="user"):
    content: str | list[UserPart]
    name: str | None = None
    cache_control: Object | None = None


class AssistantMessage(Shape, tag_field="role", tag="assistant"):
    content: str | list[AssistantPart] | None = None
    refusal: str | None = None
    name: str | None = None
    audio: AudioRef | None = None
    tool_calls: list[FunctionToolCall | CustomToolCall] | None = None
    function_call: FunctionCall | None = None
    thinking_blocks: list[Object] | None = None  # signed thinking an earlier answer returned (Anthropic)
    cache_control: Object | None = None


class ToolMessage(Shape, tag_field="role", tag="tool"):
    content: str | list[UserPart]
    tool_call_id: str
    cache_control: Object | None = None


class FunctionMessage(Shape, tag_field="role", tag="function"):
    content: str | None
    name: str


Message = SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage | FunctionMessage


# ---- tools and formats -------------------------------------------------------------------------------------

class FunctionDef(Shape):
    name: str
    description: str | None = None
    parameters: Object | None = None
    strict: bool | None = None


class FunctionTool(Shape, tag_field="type", tag="function"):
    function: FunctionDef
    cache_control: Object | None = None


class CustomDef(Shape):
    name: str
    description: str | None = None
    format: Object | None = None


class CustomTool(Shape, tag_field="type", tag="custom"):
    custom: CustomDef


class ToolName(Shape):
    name: str


class NamedToolChoice(Shape, tag_field="type", tag="function"):
    function: ToolName


class NamedCustomChoice(Shape, tag_field="type", tag="custom"):
    custom: ToolName


class AllowedTools(Shape):
    mode: Literal["auto", "required"]
    tools: list[Object]


class AllowedToolsChoice(Shape, tag_field="type", tag="allowed_tools"):
    allowed_tools: AllowedTools


class TextFormat(Shape, tag_field="type", tag="text"):
    pass


class JsonObjectFormat(Shape, tag_field="type", tag="json_object"):
    pass


class JsonSchema(Shape):
    name: str
    description: str | None = None
    schema: Object | None = None
    strict: bool | None = None


class JsonSchemaFormat(Shape, tag_field="type", tag="json_schema"):
    json_schema: JsonSchema


class StreamOptions(Shape):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class CustomVoice(Shape):
    id: str


class AudioOutput(Shape):
    voice: str | CustomVoice
    format: Literal["wav", "aac", "mp3", "flac", "opus", "pcm16"]


class Prediction(Shape, tag_field="type", tag="content"):
    content: str | list[TextPart]


class ChatRequest(Shape):
    """CreateChatCompletionRequest."""

    model: str
    messages: Annotated[list[Message], Meta(min_length=1)]
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    n: Annotated[int, Meta(ge=1, le=128)] | None = None
    stop: str | list[str] | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, int] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    seed: Int64 | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: Literal["in_memory", "24h"] | None = None
    prompt_cache_options: Object | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None
    modalities: list[Literal["text", "audio"]] | None = None
    audio: AudioOutput | None = None
    prediction: Prediction | None = None
    web_search_options: Object | None = None
    moderation: Object | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    tools: list[FunctionTool | CustomTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | NamedCustomChoice | AllowedToolsChoice \
        | None = None
    parallel_tool_calls: bool | None = None
    function_call: Literal["none", "auto"] | ToolName | None = None
    functions: list[FunctionDef] | None = None
    response_format: TextFormat | JsonObjectFormat | JsonSchemaFormat | None = None
    # not OpenAI's, read by a translator
    thinking: Object | None = None  # Anthropic's thinking settings, passed as they are
    top_k: int | None = None  # Anthropic's and Gemini's sampling


# ---- embeddings and speech ---------------------------------------------------------------------------------

class EmbeddingRequest(Shape):
    """CreateEmbeddingRequest."""

    model: str
    input: str | list[str | int | list[int]]  # one array type (msgspec); api/embeddings.py checks they agree
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: Annotated[int, Meta(ge=1)] | None = None
    user: str | None = None
    input_type: str | None = None  # Cohere's (and others'): what the text is for (search_query, …)


class SpeechRequest(Shape):
    """CreateSpeechRequest."""

    model: str
    input: str
    voice: str | CustomVoice
    instructions: str | None = None
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] | None = None
    speed: Annotated[float, Meta(ge=0.25, le=4.0)] | None = None
    stream_format: Literal["sse", "audio"] | None = None
