// What the gateway asks of wherever token state lives: the users file
// (usersFile.ts, store: file) or Redis shared by several gateways
// (redisUsers.ts, store: redis). Users, keys and PINs come from the users file
// in both.
import type { Policy } from './decision.js';
import type { ThrottleEvent } from './redisState.js';
import type { FileSafety, Outcome, WriteObserver } from './usersFile.js';

/** A shared store's link, for health and metrics. */
export interface SharedStatus {
  /** commands and version news go through */
  readonly up: boolean;
  /** seconds it has been down (0 when up) */
  readonly downSeconds: number;
  /** down, but sessions seen lingering still ride (state.lingerWhileDown) */
  readonly lingersRide: boolean;
  /** decisions taken again because another gateway wrote first */
  readonly conflicts: number;
}

export interface UserStore {
  readonly path: string;
  readonly usable: boolean;
  readonly unusableReason: string | undefined;
  readonly userCount: number;
  readonly tokenCount: number;
  readonly malformedLines: number;
  /** credentials remembered as riding a linger */
  readonly lingerCount: number;
  /** metrics: told about lock waits and writes (file store) */
  observer: WriteObserver | undefined;
  /** told of each login whose failures someone else cleared (the throttle forgets it too) */
  onFailuresCleared: ((login: string, loginIp: string | undefined) => void) | undefined;
  knows(login: string): boolean;
  lastLoggedInFrom(login: string, ip: string): boolean;
  authenticate(login: string, password: string, ip: string, logout?: boolean, usualIp?: boolean): Outcome | Promise<Outcome>;
  ridesLinger(login: string, password: string, ip: string): boolean;
  setPolicy(policy: Policy): void;
  setSafety(safety: FileSafety): void;
  reload(): Promise<void>;
  removeStaleTemp(): Promise<void>;
  /** return once every change decided so far (e.g. failure counts of refusals) is written */
  flush(): Promise<void>;
  close(): Promise<void>;
  /** a shared store: its link (undefined for the file store) */
  readonly shared?: SharedStatus | undefined;
  /** a shared store: tell the other gateways' throttles what this one counted */
  shareThrottle?(event: ThrottleEvent): void;
  /** a shared store: told what another gateway's throttle counted */
  onPeerThrottle?: ((event: ThrottleEvent) => void) | undefined;
}
