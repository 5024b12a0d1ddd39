// Where a training process stands in a data-parallel run, and the launcher that starts the processes of one machine.
// The meanings are torchrun's: --nproc-per-node processes on each of --nnodes machines, this one being --node-rank,
// meeting at --master-addr:--master-port; a scheduler may instead start every process itself with RANK, WORLD_SIZE,
// LOCAL_RANK, MASTER_ADDR and MASTER_PORT in its environment.
import { type ChildProcess, spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { availableParallelism } from 'node:os';
import { CliError } from './output.js';

/** torchrun's default port for the rendezvous. */
export const DEFAULT_MASTER_PORT = 29500;

/** One process's place in the run, as the trainer needs it. */
export interface RankPlace {
  rank: number;
  worldSize: number;
  localRank: number;
  masterAddr: string;
  masterPort: number;
}

export interface LaunchFlags {
  nprocPerNode?: number;
  nnodes?: number;
  nodeRank?: number;
  masterAddr?: string;
  masterPort?: number;
}

/** What the launcher starts on this machine. */
export interface LaunchPlan {
  nprocPerNode: number;
  nnodes: number;
  nodeRank: number;
  masterAddr: string;
  /** undefined: a free port of this machine, for a run on it alone. */
  masterPort: number | undefined;
}

/** The flags the launcher consumes; its workers are started without them. */
const LAUNCH_OPTIONS = ['--nproc-per-node', '--nnodes', '--node-rank', '--master-addr', '--master-port'];

function integerVariable(env: NodeJS.ProcessEnv, name: string, min: number, max: number): number | undefined {
  const text = env[name];
  if (text === undefined || text === '') return undefined;
  const n = Number(text);
  if (!Number.isInteger(n) || n < min || n > max) throw new CliError(`${name}=${text} must be an integer from ${min} to ${max}`, 2);
  return n;
}

/**
 * This process's place when a launcher or scheduler set torchrun's variables; null when it did not (or for a world
 * of one process, which trains as a single process does).
 */
export function placeFromEnvironment(env: NodeJS.ProcessEnv = process.env): RankPlace | null {
  const worldSize = integerVariable(env, 'WORLD_SIZE', 1, 1 << 20);
  const rank = integerVariable(env, 'RANK', 0, (worldSize ?? 1 << 20) - 1);
  if (worldSize === undefined && rank === undefined) return null;
  if (worldSize === undefined || rank === undefined) throw new CliError('RANK and WORLD_SIZE go together: set both, or neither', 2);
  if (worldSize === 1) return null;
  const masterAddr = env.MASTER_ADDR;
  const masterPort = integerVariable(env, 'MASTER_PORT', 1, 65535);
  if (!masterAddr || masterPort === undefined)
    throw new CliError(`WORLD_SIZE=${worldSize} needs MASTER_ADDR and MASTER_PORT: the address and port where rank 0 meets the others`, 2);
  const localRank = integerVariable(env, 'LOCAL_RANK', 0, worldSize - 1) ?? rank;
  return { rank, worldSize, localRank, masterAddr, masterPort };
}

/** The launcher's plan from its flags, or null when they ask for one process on one machine. */
export function launchPlan(flags: LaunchFlags, env: NodeJS.ProcessEnv = process.env): LaunchPlan | null {
  const nprocPerNode = flags.nprocPerNode ?? 1;
  const nnodes = flags.nnodes ?? 1;
  const given = LAUNCH_OPTIONS.filter((_, i) => [flags.nprocPerNode, flags.nnodes, flags.nodeRank, flags.masterAddr, flags.masterPort][i] !== undefined);
  if (env.RANK !== undefined && given.length > 0)
    throw new CliError(`RANK is set, so this process is one rank of a run started elsewhere; leave out ${given.join(', ')}`, 2);
  if (nnodes === 1) {
    if (flags.nodeRank !== undefined && flags.nodeRank !== 0) throw new CliError(`--node-rank ${flags.nodeRank} needs --nnodes above it`, 2);
    if (nprocPerNode === 1) {
      if (flags.masterAddr !== undefined || flags.masterPort !== undefined)
        throw new CliError('--master-addr and --master-port go with --nproc-per-node or --nnodes above 1', 2);
      return null;
    }
    return { nprocPerNode, nnodes, nodeRank: 0, masterAddr: flags.masterAddr ?? '127.0.0.1', masterPort: flags.masterPort };
  }
  if (flags.nodeRank === undefined) throw new CliError(`--nnodes ${nnodes} needs --node-rank: this machine's place, from 0 to ${nnodes - 1}`, 2);
  if (flags.nodeRank >= nnodes) throw new CliError(`--node-rank must be below --nnodes (${nnodes}), got ${flags.nodeRank}`, 2);
  if (!flags.masterAddr) throw new CliError('--nnodes above 1 needs --master-addr: the address of the machine with --node-rank 0, as the others reach it', 2);
  return { nprocPerNode, nnodes, nodeRank: flags.nodeRank, masterAddr: flags.masterAddr, masterPort: flags.masterPort ?? DEFAULT_MASTER_PORT };
}

/** The arguments without the launcher's own flags (given as "--flag value" or "--flag=value"). */
export function withoutLaunchFlags(args: readonly string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (LAUNCH_OPTIONS.includes(arg)) i++;
    else if (!LAUNCH_OPTIONS.some((flag) => arg.startsWith(`${flag}=`))) out.push(arg);
  }
  return out;
}

async function freePort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, host, () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

/**
 * Starts this machine's workers (this CLI with `args`, each with its rank in the environment and its share of the
 * cores), forwards SIGINT and SIGTERM to them, and waits for all. When one fails, the others fail within the
 * time-out on their own; any still running `graceMs` later are killed. Resolves to the exit code: a worker's failure,
 * else 130 when interrupted, else 0.
 */
export async function launchWorkers(plan: LaunchPlan, args: readonly string[], graceMs: number, note: (message: string) => void): Promise<number> {
  const worldSize = plan.nprocPerNode * plan.nnodes;
  const masterPort = plan.masterPort ?? (await freePort(plan.masterAddr));
  const threads = String(Math.max(1, Math.floor(availableParallelism() / plan.nprocPerNode)));
  const workers: ChildProcess[] = [];
  const exits: Promise<{ localRank: number; code: number }>[] = [];
  for (let localRank = 0; localRank < plan.nprocPerNode; localRank++) {
    const env = {
      ...process.env,
      RANK: String(plan.nodeRank * plan.nprocPerNode + localRank),
      WORLD_SIZE: String(worldSize),
      LOCAL_RANK: String(localRank),
      LOCAL_WORLD_SIZE: String(plan.nprocPerNode),
      MASTER_ADDR: plan.masterAddr,
      MASTER_PORT: String(masterPort),
      HEMATO_NUM_THREADS: process.env.HEMATO_NUM_THREADS || threads,
    };
    // Their own process group: a terminal's Ctrl-C reaches the launcher alone, which passes it on once per press.
    const worker = spawn(process.execPath, [...process.execArgv, process.argv[1], ...args], { env, stdio: 'inherit', detached: true });
    workers.push(worker);
    exits.push(
      new Promise((resolve) => {
        worker.once('error', () => resolve({ localRank, code: 1 }));
        worker.once('exit', (code, signal) => resolve({ localRank, code: code ?? (signal === 'SIGINT' ? 130 : 1) }));
      }),
    );
  }
  const forward = (signal: NodeJS.Signals) => () => {
    for (const worker of workers) if (worker.exitCode === null && worker.signalCode === null) worker.kill(signal);
  };
  const onInt = forward('SIGINT');
  const onTerm = forward('SIGTERM');
  process.on('SIGINT', onInt);
  process.on('SIGTERM', onTerm);
  let killer: NodeJS.Timeout | undefined;
  const codes: number[] = [];
  try {
    const pending = new Set(exits.map((_, i) => i));
    while (pending.size > 0) {
      const { localRank, code } = await Promise.race([...pending].map((i) => exits[i]));
      pending.delete(localRank);
      codes.push(code);
      if (code !== 0 && code !== 130) note(`worker ${localRank} (rank ${plan.nodeRank * plan.nprocPerNode + localRank}) exited with code ${code}`);
      if (code !== 0 && !killer) {
        killer = setTimeout(() => {
          for (const worker of workers) if (worker.exitCode === null && worker.signalCode === null) worker.kill('SIGKILL');
        }, graceMs);
      }
    }
  } finally {
    clearTimeout(killer);
    process.off('SIGINT', onInt);
    process.off('SIGTERM', onTerm);
  }
  // A failure outranks an interruption, which outranks success.
  return codes.find((code) => code !== 0 && code !== 130) ?? (codes.includes(130) ? 130 : 0);
}
