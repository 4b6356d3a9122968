/**
 * Calls back when routes.yaml may have changed. The folder is watched rather than the file:
 * editors save by writing a new file and renaming it over the old one, and Kubernetes swaps a
 * ConfigMap through a symlink, and both leave a watch on the old file's inode silent. Events are
 * debounced; the reloader compares contents, so a spurious event costs one read.
 */
import { watch, type FSWatcher } from 'node:fs';
import { basename, dirname } from 'node:path';

export interface ConfigWatcher {
  close(): void;
}

export function watchConfig(file: string, onChange: () => void, onError: (err: Error) => void, debounceMs = 100): ConfigWatcher {
  const name = basename(file);
  let timer: NodeJS.Timeout | undefined;
  let watcher: FSWatcher;
  try {
    watcher = watch(dirname(file), { persistent: false }, (_event, changed) => {
      if (changed !== null && changed !== name && !changed.startsWith('..')) return;
      clearTimeout(timer);
      timer = setTimeout(onChange, debounceMs);
    });
  } catch (err) {
    onError(err as Error);
    return { close: () => undefined };
  }
  watcher.on('error', onError);
  return {
    close() {
      clearTimeout(timer);
      watcher.close();
    },
  };
}
