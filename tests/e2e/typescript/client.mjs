// The original example's client, in plain JavaScript: retrieve the state, store
// the current time, print both as the seed does. FAME_DIRECT_ADMISSION_URL says
// where the sentinel is.
import { Agent, CLIENT_CONFIG } from "@naylence/agent-sdk";
import { withFabric } from "@naylence/runtime";

await withFabric({ rootConfig: CLIENT_CONFIG }, async () => {
  const agent = Agent.remoteByAddress("storage@fame.fabric");
  const previous = await agent.retrieveValue();
  console.log(`Previous state: ${JSON.stringify(previous)}`);
  const updated = await agent.storeValue(`${Date.now()}`);
  console.log(`Updated state: ${JSON.stringify(updated)}`);
});
