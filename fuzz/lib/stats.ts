/**
 * Depth counters a target bumps when an input reaches an interesting state (a served request, a
 * ring failure, a clean driver failure by code). The runner prints them: a proxy for coverage,
 * since the fallback runner has no coverage feedback.
 */
export const stats = new Map<string, number>();

/** Counts one occurrence of `key`. */
export function hit(key: string): void {
  stats.set(key, (stats.get(key) ?? 0) + 1);
}
