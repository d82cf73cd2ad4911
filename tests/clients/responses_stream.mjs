// The AI SDK's OpenAI provider against tokenfan: `openai(model)` is the
// Responses API (POST {baseURL}/responses), used unmodified.
//
//   node responses_stream.mjs <provider package: @ai-sdk/openai | ai-sdk-openai-v2> <ai package> <baseURL> <prompt> <maxOutputTokens> <stream|generate>
//
// Prints one JSON line: {text, responseId, finishReason, usage} or {error}.

const [providerPkg, aiPkg, baseURL, prompt, maxOutputTokens, mode] = process.argv.slice(2);
const { createOpenAI } = await import(providerPkg);
const { streamText, generateText } = await import(aiPkg);

const openai = createOpenAI({ baseURL, apiKey: "unused" });
const options = { model: openai("simulated"), prompt, maxOutputTokens: Number(maxOutputTokens), maxRetries: 0 };
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

try {
  if (mode === "stream") {
    const errors = [];
    const result = streamText({ ...options, onError: ({ error }) => errors.push(String(error?.message ?? error)) });
    let text = "";
    for await (const delta of result.textStream) text += delta;
    const response = await result.response;
    out({ text, responseId: response.id, finishReason: await result.finishReason, usage: await result.usage, errors });
  } else {
    const result = await generateText(options);
    out({ text: result.text, responseId: result.response.id, finishReason: result.finishReason, usage: result.usage });
  }
} catch (error) {
  out({ error: String(error?.message ?? error) });
}
