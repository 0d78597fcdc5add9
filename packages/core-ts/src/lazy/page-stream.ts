/**
 * A page-server connection's data path on a native thread, at both ends: uffd-rs's
 * PageStream serves the page server's background lanes straight from the frozen
 * processes; its PageReceiver installs a destination's background replies as they arrive.
 * Here so that the page server reaches the native package through core-ts, like
 * everything else. The congestion control a page server's connections send with belongs
 * to that data path too.
 */
export {
  PageStream, PageReceiver, setTcpCongestion, tcpCongestion, type PageStreamEvent, type PageReceiverEvent, type InstallTarget,
} from '@lazymig/uffd-rs';
