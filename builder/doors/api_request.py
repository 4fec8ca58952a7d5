"""Reading an OpenAI chat request for `builder serve`: the question (the last user message), the
conversation before it, the context and the generation options, or an ApiError in OpenAI's
shape that names the field."""

from builder.config import MAX_CONTEXT_CHARS, MAX_QUESTION_CHARS

ROLES = ("system", "developer", "user", "assistant")


class ApiError(Exception):
    """A request the API refuses: status and OpenAI's error fields."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.type, self.param, self.code = status, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": self.type, "param": self.param,
                          "code": self.code}}


def _text(content, param: str) -> str:
    """A message's text: a string or a list of {"type": "text", "text": ...} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
            isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
            for p in content):
        return "".join(p["text"] for p in content)
    raise ApiError(400, f"{param} must be a string or a list of text parts (only text is "
                   "understood)", param=param, code="invalid_type")


def _number(body: dict, key: str, default, low: float, high: float, *, integer=False):
    value = body.get(key)
    if value is None:
        return default
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not low <= value <= high:
        raise ApiError(400, f"{key} must be {'an integer' if integer else 'a number'} from "
                       f"{low} to {high}, not {value!r}", param=key, code="invalid_value")
    return value


def read_feedback(body) -> tuple[str, int]:
    """A feedback request's answer id and value (1 or -1), or an ApiError naming the field."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    reply_id, value = body.get("id"), body.get("value")
    if not isinstance(reply_id, str) or not reply_id.startswith("chatcmpl-"):
        raise ApiError(400, "id must be the answer's id (chatcmpl-...)", param="id",
                       code="invalid_value")
    if isinstance(value, bool) or value not in (1, -1):
        raise ApiError(400, f"value must be 1 (👍) or -1 (👎), not {value!r}", param="value",
                       code="invalid_value")
    return reply_id, value


def read_request(body, model: str, max_tokens_cap: int) -> dict:
    """The chat request's question, earlier questions, context and generation options, or an
    ApiError that names the field."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise ApiError(400, "you must provide a model parameter", param="model")
    if body["model"] != model:
        raise ApiError(404, f"the model {body['model']!r} does not exist; this server serves "
                       f"{model!r} (GET /v1/models)", param="model", code="model_not_found")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list of {role, content}",
                       param="messages")
    turns = []  # (role, text)
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            role = message.get("role") if isinstance(message, dict) else None
            raise ApiError(400, f"messages[{i}].role must be one of {', '.join(ROLES)}, not "
                           f"{role!r}", param=f"messages[{i}].role", code="invalid_value")
        content = message.get("content")
        if content is None and message["role"] == "assistant":
            content = ""
        turns.append((message["role"], _text(content, f"messages[{i}].content")))
    if turns[-1][0] != "user":
        raise ApiError(400, "the last message must be the user's question",
                       param=f"messages[{len(turns) - 1}].role", code="invalid_value")
    question = turns[-1][1].strip()
    if not question:
        raise ApiError(400, "the last user message is empty", param=f"messages[{len(turns) - 1}]"
                       ".content", code="invalid_value")
    earlier = [text.strip() for role, text in turns[:-1] if role == "user" and text.strip()]
    context = body.get("context") or ""
    if not isinstance(context, str):
        raise ApiError(400, "context must be a string", param="context", code="invalid_type")
    for text, param, cap in ((question, f"messages[{len(turns) - 1}].content", MAX_QUESTION_CHARS),
                             (context, "context", MAX_CONTEXT_CHARS)):
        if len(text) > cap:  # (as on the page: longer text only pushes the FAQ out of the prompt)
            raise ApiError(400, f"{param} is {len(text):,} characters; at most {cap:,}",
                           param=param, code="string_above_max_length")
    if not isinstance(body.get("stream", False), bool):
        raise ApiError(400, "stream must be true or false", param="stream", code="invalid_type")
    if _number(body, "n", 1, 1, 1, integer=True) != 1:
        raise ApiError(400, "n must be 1", param="n")
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = body.get(key)
    if type(max_tokens) is int and max_tokens > max_tokens_cap:  # bool is not a count
        raise ApiError(400, f"{key} is {max_tokens}; this server allows at most {max_tokens_cap}",
                       param=key, code="invalid_value")
    customer = body.get("user") or ""  # OpenAI's end-user id: kept only as a pseudonym
    if not isinstance(customer, str) or len(customer) > 256:
        raise ApiError(400, "user must be a string of at most 256 characters", param="user",
                       code="invalid_value")
    return {
        "question": question, "context": context, "stream": bool(body.get("stream", False)),
        "customer": customer,
        "history": earlier,  # the customer's earlier questions: a follow-up reads them
        "options": {"max_new_tokens": _number(body, key, min(256, max_tokens_cap), 1,
                                              max_tokens_cap, integer=True),
                    "temperature": _number(body, "temperature", 0.0, 0, 2),
                    "top_p": _number(body, "top_p", 0.9, 0, 1)},
    }
