export * from './types.js';
export { ImageError, type ImageErrorCode } from './errors.js';
export { crc32c, crc32cUpdate, crc32cCombine } from './crc32c.js';
export {
  encodeInventory, decodeInventoryFile, encodeCore, decodeCoreFile, encodePagemap, decodePagemapFile,
  type ImageKind,
} from './codec.js';
export { LIMITS as IMAGE_LIMITS } from './validate.js';
export { PagesWriter, PagesReader, readPagesInfo, type PagesReaderOptions, type PagesVerify } from './pages.js';
export {
  ImagesDirWriter, writeImages, readImages, imagesDirNames, readImageFile, openPagesReader, type ImageFile, type LoadedImages,
  type ImagesDirWriterOptions, type WriteImagesOptions, type PagesData,
} from './dir.js';
export {
  renderShowJson, renderShowSummary, imagesJson, imageFileJson, imagesSummary, imageFileSummary, pageCounts, humanBytes,
  type ShowOptions, type PageCounts, type Json as ShowJson,
} from './show.js';
export { regsFromBuffer, regsToBuffer } from './regs.js';
export { sampleImageSet, samplePage, type Sample, type SampleOptions } from './sample.js';
export { awaitImages, warmImageReading, whenComplete, type ArrivalOptions } from './arrival.js';
