export type { PageSource, PageReader, Priority, InstalledPages, InstallingFetch } from './page-source.js';
export { FrozenProcessReader, ImagesReader } from './readers.js';
export {
  PageStream, PageReceiver, setTcpCongestion, tcpCongestion, type PageStreamEvent, type PageReceiverEvent, type InstallTarget,
} from './page-stream.js';
export { LazyPagesEngine, DEFAULT_CHUNK_PAGES, DEFAULT_IN_FLIGHT, DEFAULT_MAX_WINDOW, type LazyTarget, type LazyEngineOptions, type LazyStats, type LazySummary, type ServiceTimes } from './engine.js';
export { PageSpace } from './page-space.js';
export { lazyRanges, vmasToRegister, vmasOverlapping, lazyCapable, entriesForLazyRestore, type LazyPlanRange } from './plan.js';
export { attachUserfaultfd, AttachError, UFFD_EVENTS, UFFDIO_STRUCT_BYTES, type RemoteProcess } from './attach.js';
export { ImagesPageSource } from './local-source.js';
export { ControlClient, serveControl, writeCompletion, clearCompletion, COMPLETE_FILE, controlSocketPath, CONTROL_SOCKET, type ControlMessage, type ControlHandlers } from './control.js';
export { startGuard, guardBinary, GUARD_LOG } from './guard.js';
