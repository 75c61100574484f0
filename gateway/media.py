"""The media policy (``TIERGATE_MEDIA_POLICY``), one for every protocol.

DeepSeek V4 reads text only. What happens to an image, audio, video or file part of a
request (an Anthropic ``image`` / ``document`` block, a Responses ``input_image`` /
``input_file`` / ``input_audio`` part, a chat ``image_url`` / ``input_audio`` / ``file`` /
``audio_url`` / ``video_url`` part): "note" puts a visible text note in its place (the
request goes on, and the route reason and ``tiergate_request_adaptations_total`` count
them as ``<kind>-as-text=N``), "reject" refuses the request with a 400 that says why.
"""

from __future__ import annotations

from typing import Literal

from policies.errors import InvalidRequest

MediaPolicy = Literal["note", "reject"]


def media_note(kind: str) -> str:
    return f"[{kind} omitted: this model reads text only]"


class Media:
    """Applies the media policy to one request's parts and counts what it replaced."""

    def __init__(self, policy: MediaPolicy) -> None:
        self.policy = policy
        self.replaced: dict[str, int] = {}

    def replace(self, kind: str, where: str, what: str, param: str) -> str:
        """The note that stands for a part of ``kind`` (image, audio, file...), counted; or,
        under "reject", a 400 saying that ``what`` (the part's own name, such as
        "image_url parts") at ``where`` is not supported, with ``param`` as its field."""
        if self.policy == "reject":
            raise InvalidRequest(
                f"{where}: {what} are not supported (DeepSeek V4 reads text only); "
                "send text instead",
                param=param,
            )
        self.replaced[kind] = self.replaced.get(kind, 0) + 1
        return media_note(kind)

    def notes(self) -> list[str]:
        """The route reason's notes: ``image-as-text=2`` and the like."""
        return [f"{kind}-as-text={n}" for kind, n in self.replaced.items()]
