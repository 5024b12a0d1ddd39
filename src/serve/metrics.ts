// What GET /metrics reports, in Prometheus' text format: one registry per server, so that servers in one process
// (tests, embedding) keep their own counts.
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';

export interface ServerMetrics {
  registry: Registry;
  requests: Counter<'route' | 'status'>;
  errors: Counter<'code'>;
  batchSize: Histogram;
  latency: Histogram<'route'>;
}

export function createMetrics(queueLength: () => number): ServerMetrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'hemato_' });
  const metrics = {
    registry,
    requests: new Counter({
      name: 'hemato_http_requests_total',
      help: 'HTTP requests answered, by route and status',
      labelNames: ['route', 'status'] as const,
      registers: [registry],
    }),
    errors: new Counter({
      name: 'hemato_errors_total',
      help: 'Errors reported to clients (whole requests and single images), by code',
      labelNames: ['code'] as const,
      registers: [registry],
    }),
    batchSize: new Histogram({
      name: 'hemato_batch_size',
      help: 'Images per forward pass',
      buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256],
      registers: [registry],
    }),
    latency: new Histogram({
      name: 'hemato_request_duration_seconds',
      help: "Time from a request's arrival to its answer, by route",
      labelNames: ['route'] as const,
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers: [registry],
    }),
  };
  new Gauge({
    name: 'hemato_queue_length',
    help: 'Images waiting for a forward pass',
    registers: [registry],
    collect() {
      this.set(queueLength());
    },
  });
  return metrics;
}
