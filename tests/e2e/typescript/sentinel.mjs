// The original example's sentinel; FAME_LISTENER_PORT picks its port.
import { Sentinel } from "@naylence/runtime";
import { SENTINEL_CONFIG } from "@naylence/agent-sdk";

await Sentinel.aserve({ rootConfig: SENTINEL_CONFIG, logLevel: "warning" });
