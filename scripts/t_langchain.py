from langchain_openai import ChatOpenAI
from langchain_core.tools import tool
from langchain_core.messages import HumanMessage, ToolMessage
KEY=open("/work/attackA/key.txt").read().strip()
@tool
def get_weather(city: str) -> str:
    """Get weather for a city."""
    return "sunny"
for model in ["deepseek-chat","deepseek-reasoner","auto"]:
    for resp_api in [False, True]:
        try:
            llm=ChatOpenAI(model=model, base_url="http://127.0.0.1:19150/v1", api_key=KEY, use_responses_api=resp_api, max_tokens=200)
            r=llm.invoke("hi"); print("OK invoke", model, resp_api, repr(r.content)[:80], r.usage_metadata)
            chunks=list(llm.stream("hi")); print("OK stream", model, resp_api, len(chunks))
            lt=llm.bind_tools([get_weather], tool_choice="required")
            msgs=[HumanMessage("weather in Paris?")]
            ai=lt.invoke(msgs); print("  tool_calls", ai.tool_calls)
            msgs += [ai] + [ToolMessage("sunny", tool_call_id=tc["id"]) for tc in ai.tool_calls]
            ai2=llm.bind_tools([get_weather]).invoke(msgs); print("  after tool:", repr(ai2.content)[:100])
            # streaming tool call
            agg=None
            for ch in lt.stream([HumanMessage("weather in Paris?")]):
                agg = ch if agg is None else agg+ch
            print("  stream tool_calls", agg.tool_calls)
            from pydantic import BaseModel
            class Ans(BaseModel):
                answer: str
            so=llm.with_structured_output(Ans)
            print("  structured:", so.invoke("give answer"))
        except Exception as e:
            print("ERR", model, resp_api, type(e).__name__, str(e)[:400])
