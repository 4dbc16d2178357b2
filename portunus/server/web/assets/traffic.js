// Throughput from counters: the API gives cumulative bytes per rule (each
// edge reports every 5 s); the rate is the change between two reports over
// the time between them.

import { statsMoment } from './rulefmt.js';

// A rule whose counters have not moved for this long (browser time) is idle.
const STALE_MS = 16000;

export class RateTracker {
  constructor() {
    this.last = new Map();
  }

  /** Feed one stats answer; returns {in, out} bytes per second. */
  update(ruleId, stats) {
    const moment = statsMoment(stats);
    const prev = this.last.get(ruleId);
    const now = Date.now();
    const entry = {
      moment,
      bytesIn: Number(stats.bytes_in) || 0,
      bytesOut: Number(stats.bytes_out) || 0,
      rateIn: 0,
      rateOut: 0,
      seen: now,
    };
    if (prev && moment !== null && prev.moment !== null) {
      if (moment === prev.moment) {
        // No new report since the last poll: keep the rate a while.
        Object.assign(entry, { rateIn: prev.rateIn, rateOut: prev.rateOut, seen: prev.seen });
        if (now - prev.seen > STALE_MS) Object.assign(entry, { rateIn: 0, rateOut: 0 });
      } else if (moment > prev.moment) {
        const seconds = (moment - prev.moment) / 1000;
        entry.rateIn = Math.max(0, (entry.bytesIn - prev.bytesIn) / seconds);
        entry.rateOut = Math.max(0, (entry.bytesOut - prev.bytesOut) / seconds);
      }
    }
    this.last.set(ruleId, entry);
    return { in: entry.rateIn, out: entry.rateOut };
  }

  rate(ruleId) {
    const entry = this.last.get(ruleId);
    return entry ? { in: entry.rateIn, out: entry.rateOut } : { in: 0, out: 0 };
  }

  forget(keep) {
    for (const id of this.last.keys()) if (!keep.has(id)) this.last.delete(id);
  }
}

// The dashboard's history lives as long as the tab does, so leaving the
// dashboard and coming back keeps the chart.
const MAX_SAMPLES = 720;
export const dashboardTraffic = {
  tracker: new RateTracker(),
  samples: [],
  add(sample) {
    this.samples.push(sample);
    if (this.samples.length > MAX_SAMPLES) this.samples.splice(0, this.samples.length - MAX_SAMPLES);
  },
};
