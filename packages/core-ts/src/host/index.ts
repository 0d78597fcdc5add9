export { checkHost, evaluateHost, REQUIRED_UFFD_FEATURES, type CheckItem, type HostCheck } from './check.js';
export { readHostFacts, parseCapEff, CAPABILITIES, type HostFacts, type CapabilityName } from './facts.js';
export { niced } from './priority.js';
export { pageAlignedBuffer } from './page-aligned.js';
