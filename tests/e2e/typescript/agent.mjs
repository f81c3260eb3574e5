// The original example's persistent agent, in plain JavaScript: one value in the
// agent's state, served as storeValue / retrieveValue at storage@fame.fabric.
// The tests run it on the memory profile (FAME_STORAGE_PROFILE=memory).
import { BaseAgent, BaseAgentState, NODE_CONFIG } from "@naylence/agent-sdk";
import { operation } from "@naylence/runtime";

class CustomAgentState extends BaseAgentState {
  value;
}

class PersistentAgent extends BaseAgent {
  constructor() {
    super(null, { stateModel: CustomAgentState });
  }

  async storeValue(value) {
    return await this.withState(async (state) => {
      state.value = value;
      return state;
    });
  }

  async retrieveValue() {
    return await this.getState();
  }
}

// What `@operation()` does in the TypeScript source (plain JS has no decorators).
for (const name of ["storeValue", "retrieveValue"]) {
  const proto = PersistentAgent.prototype;
  operation()(proto, name, Object.getOwnPropertyDescriptor(proto, name));
}

await new PersistentAgent().aserve("storage@fame.fabric", { rootConfig: NODE_CONFIG });
