export { restore, type RestoreOptions, type RestoreResult, type RestoreProgress, type LazyHook, type LazyRestoreTarget } from './restore.js';
export { RestoreError, type RestoreErrorCode } from './errors.js';
export { RestoreRefusedError, checkImages, type Problem } from './plan.js';
export { Remote, RemoteSyscallError, Scratch, SYS as REMOTE_SYS } from './remote.js';
export { stubBinary, type StubExit } from './stub.js';
