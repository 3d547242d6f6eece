#!/usr/bin/env python3
"""tests/deploy/test_deploy.py - checks deploy/ (compose, Dockerfile, Kubernetes, Collector,
Jaeger, Prometheus, Grafana) with the real tools that run here, and prints TAP.

  test_deploy.py files ROOT BUILD     parsers and validators, cross-checks between the files
  test_deploy.py live ROOT BUILD      a real exporter and gateway scraped for the dashboard's
                                      metric names; shop-probe and the images' entrypoint run

No Docker engine or Kubernetes cluster runs here, so:
  - the compose file goes through `docker-compose config` (Debian 12's docker-compose 1.29: its
    schema and its reference checks, no engine needed), then our own structural checks;
  - the Collector and Jaeger configs through `jaeger validate` (Jaeger v2 is an OpenTelemetry
    Collector distribution with the otlp receiver, batch and memory_limiter processors and the
    otlp exporter the Collector config uses);
  - the Prometheus configs through `promtool check config`;
  - deploy/shop.conf and each container's SHOP_*/OTEL_* environment through each process's own
    --check-config;
  - the Dockerfile's meson options through `meson setup` here (every binary it copies must be a
    target), and each runtime stage's packages against the libraries its binaries link;
  - the Kubernetes manifests through k8scheck (tools/go/k8scheck: strict decoding into the
    official k8s.io/api types; kubeconform would need its JSON schemas from the network), then
    structural checks (selectors, probes, resources, references, the ring's sharing).
Runs in var/venv (PyYAML, tests/py/requirements.txt); re-executes itself there if needed.
SHOP_REQUIRE_TOOLS=1 turns a missing tool into a failure instead of a skip.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

try:
    import yaml
except ImportError:  # the system python3 meson found: go to the venv
    root = sys.argv[2] if len(sys.argv) > 2 else '.'
    vpy = os.path.join(root, 'var', 'venv', 'bin', 'python')
    if os.access(vpy, os.X_OK) and os.path.realpath(sys.executable) != os.path.realpath(vpy):
        os.execv(vpy, [vpy] + sys.argv)
    print('not ok 1 - PyYAML importable (run tests/py/setup.sh; ./shop test does)')
    print('1..1')
    sys.exit(1)

# ------------------------------------------------------------------ TAP


class Tap:
    def __init__(self):
        self.n = 0
        self.failed = 0

    def ok(self, cond, name, why=''):
        self.n += 1
        if cond:
            print(f'ok {self.n} - {name}')
        else:
            self.failed += 1
            print(f'not ok {self.n} - {name}')
            for line in str(why).splitlines()[:30]:
                print(f'# {line}')
        sys.stdout.flush()
        return cond

    def skip(self, name, why):
        self.n += 1
        print(f'ok {self.n} - {name} # SKIP {why}')

    def problems(self, problems, name):
        """One case per check: passes when the list of problems found is empty."""
        return self.ok(not problems, name, '\n'.join(problems))

    def done(self):
        print(f'1..{self.n}')
        return 1 if self.failed or self.n == 0 else 0


T = Tap()
REQUIRE = os.environ.get('SHOP_REQUIRE_TOOLS') == '1'


def run(cmd, env=None, timeout=120):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
        return p.returncode, p.stdout + p.stderr
    except FileNotFoundError as e:
        return 127, str(e)
    except subprocess.TimeoutExpired:
        return 124, f'{cmd[0]}: timed out after {timeout}s'


def tool(name, path, case):
    """path if executable, else a skip (or failure with SHOP_REQUIRE_TOOLS=1) and None."""
    if path and os.access(path, os.X_OK):
        return path
    if REQUIRE:
        T.ok(False, case, f'{name} not found ({path}); ./shop test installs or builds it')
    else:
        T.skip(case, f'{name} not found ({path})')
    return None


def load_yaml_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


# ---------------------------------------------------- facts from the project

# ./shop up's processes (UP_ORDER) and the compose service that plays each.
UP_TO_COMPOSE = {
    'postgres': 'postgres', 'redis': 'redis', 'kafka': 'kafka', 'jaeger': 'jaeger',
    'payment-sim': 'shop-payment-sim', 'exporter': 'shop-exporter', 'user-svc': 'user-svc',
    'inventory-svc': 'inventory-svc', 'payment-svc': 'payment-svc', 'order-svc': 'order-svc',
    'gateway': 'gateway',
}
# Our processes: compose service / Dockerfile target -> (binary in the build dir, config port key).
SHOP_PROCS = {
    'gateway': ('services/gateway/gateway', 'gateway.port'),
    'order-svc': ('services/order/order-svc', 'order_svc.port'),
    'user-svc': ('services/user/user-svc', 'user_svc.port'),
    'inventory-svc': ('services/inventory/inventory-svc', 'inventory_svc.port'),
    'payment-svc': ('services/payment/payment-svc', 'payment_svc.port'),
    'shop-exporter': ('exporter/shop-exporter', 'exporter.metrics_port'),
    'shop-payment-sim': ('shop-payment-sim', 'payment_sim.port'),
}
RING_USERS = ['shop-exporter', 'gateway', 'order-svc', 'user-svc', 'inventory-svc', 'payment-svc']
GRPC_SVCS = ['order-svc', 'user-svc', 'inventory-svc', 'payment-svc']


def up_order(root):
    m = re.search(r'^UP_ORDER=\(([^)]*)\)', open(os.path.join(root, 'shop')).read(), re.M)
    return m.group(1).split() if m else []


def documented_env(root):
    """Environment variables docs/CONFIG.md lists (the key tables' environment column)."""
    text = open(os.path.join(root, 'docs', 'CONFIG.md')).read()
    return set(re.findall(r'`((?:SHOP|OTEL)_[A-Z0-9_]+)`', text))


# Variables that are not configuration keys, each with the source file that reads it.
EXTRA_ENV = {
    'SHOP_CONFIG': 'core/config.c',
    'SHOP_RESOLVE': 'deploy/docker/entrypoint.sh',
    'SHOP_RESOLVE_TIMEOUT': 'deploy/docker/entrypoint.sh',
    'OTEL_RESOURCE_ATTRIBUTES': 'core/trace.c',
    'OTEL_SERVICE_NAME': 'core/trace.c',
    'OTEL_EXPORTER_OTLP_ENDPOINT': 'exporter/settings.c',
}


def env_problems(root, where, names):
    doc = documented_env(root)
    out = []
    for n in names:
        if not n.startswith(('SHOP_', 'OTEL_')) or n in doc:
            continue
        src = EXTRA_ENV.get(n)
        if src is None or n not in open(os.path.join(root, src)).read():
            out.append(f'{where}: {n} is neither in docs/CONFIG.md nor read where expected')
    return out


def conf_get(build, conf, key, env=None):
    rc, out = run([os.path.join(build, 'shop-config'), 'get', key, '--config', conf],
                  env=dict(os.environ, **(env or {})))
    return out.strip() if rc == 0 else None


def image_pinned(image):
    """name:tag with a real tag (not latest), or a digest."""
    if '@sha256:' in image:
        return True
    name, _, tag = image.rpartition(':')
    return bool(name) and '/' not in tag and tag not in ('', 'latest')


def resolve_like_entrypoint(env):
    """What deploy/docker/entrypoint.sh makes of the SHOP_RESOLVE variables: host -> 127.0.0.1."""
    env = dict(env)
    for var in env.get('SHOP_RESOLVE', '').split():
        v = env.get(var, '')
        scheme = ''
        if '://' in v:
            scheme, v = v.split('://', 1)
            scheme += '://'
        host, sep, rest = v.partition(':')
        env[var] = scheme + '127.0.0.1' + sep + rest
    return env


def size_bytes(s):
    m = re.fullmatch(r'(\d+)\s*([kKmMgG]?)(i?[bB])?', str(s).strip())
    if not m:
        return None
    return int(m.group(1)) * {'': 1, 'k': 1 << 10, 'm': 1 << 20, 'g': 1 << 30}[m.group(2).lower()]


# ====================================================================== files


def check_parse_all(root):
    bad, n = [], 0
    for dirpath, _, files in os.walk(os.path.join(root, 'deploy')):
        for f in sorted(files):
            p = os.path.join(dirpath, f)
            rel = os.path.relpath(p, root)
            try:
                if f.endswith(('.yaml', '.yml')):
                    load_yaml_docs(p)
                    n += 1
                elif f.endswith('.json'):
                    json.load(open(p))
                    n += 1
            except (yaml.YAMLError, ValueError) as e:
                bad.append(f'{rel}: {e}')
    T.ok(n >= 20 and not bad, f'every YAML and JSON file under deploy/ parses ({n} files)', '\n'.join(bad))


def check_compose(root, build):
    path = os.path.join(root, 'deploy', 'compose.yaml')
    dc = shutil.which('docker-compose')
    if tool('docker-compose', dc or 'docker-compose', 'docker-compose config validates deploy/compose.yaml'):
        rc, out = run([dc, '--project-directory', os.path.join(root, 'deploy'), '-f', path, 'config', '-q'])
        T.ok(rc == 0, 'docker-compose config validates deploy/compose.yaml (schema and references)', out)

    c = yaml.safe_load(open(path))
    svcs = c.get('services', {})

    # every process of ./shop up has a service
    order = up_order(root)
    missing = [f'{p} (as {UP_TO_COMPOSE.get(p, "?")})' for p in order if UP_TO_COMPOSE.get(p) not in svcs]
    T.ok(len(order) >= 10 and not missing, 'every process ./shop up starts has a compose service',
         f'UP_ORDER={order}; missing: {missing}')
    extra = [s for s in ('otel-collector', 'prometheus', 'grafana', 'shop-migrate') if s not in svcs]
    T.problems([f'no service {s}' for s in extra],
               'compose also runs the Collector, Prometheus, Grafana and the migration job')

    # references and start order
    probs = []
    for name, s in svcs.items():
        deps = s.get('depends_on', {})
        if isinstance(deps, list):
            probs.append(f'{name}: depends_on without conditions')
            deps = {d: {} for d in deps}
        for d, cond in deps.items():
            if d not in svcs:
                probs.append(f'{name} depends on unknown service {d}')
                continue
            cnd = (cond or {}).get('condition')
            if cnd == 'service_healthy' and 'healthcheck' not in svcs[d]:
                probs.append(f'{name} waits for {d} to be healthy, but {d} has no healthcheck')
            if cnd == 'service_completed_successfully' and svcs[d].get('restart', 'no') != 'no':
                probs.append(f'{name} waits for {d} to complete, but {d} restarts')
        for key in ('ipc', 'pid'):
            v = s.get(key, '')
            if v.startswith('service:') and v[8:] not in svcs:
                probs.append(f'{name}: {key} joins unknown service {v[8:]}')
    T.problems(probs, 'compose depends_on, ipc and pid name existing services with fitting conditions')

    # our processes: health checks on the configured port, waited for by their dependants
    conf = os.path.join(root, 'deploy', 'shop.conf')
    probs = []
    for name, (_, port_key) in SHOP_PROCS.items():
        s = svcs.get(name)
        if s is None:
            probs.append(f'no service {name}')
            continue
        hc = s.get('healthcheck', {}).get('test', [])
        port = conf_get(build, conf, port_key, resolve_like_entrypoint(s.get('environment', {})))
        kind = 'grpc' if name in GRPC_SVCS else 'http'
        if hc[:3] != ['CMD', 'shop-probe', kind] or len(hc) < 4 or hc[3] != f'127.0.0.1:{port}':
            probs.append(f'{name}: healthcheck {hc} is not shop-probe {kind} 127.0.0.1:{port} ([{port_key}])')
        if not s.get('build', {}).get('target') == name:
            probs.append(f'{name}: not built from the Dockerfile target {name}')
    for name in svcs:
        for d, cond in (svcs[name].get('depends_on') or {}).items():
            if d in SHOP_PROCS and (cond or {}).get('condition') != 'service_healthy':
                probs.append(f'{name} does not wait for {d} to be healthy')
    T.problems(probs, 'compose health checks probe each process on its configured port; dependants wait for healthy')

    # the span ring: one IPC and PID namespace for every ring user, /dev/shm big enough
    probs = []
    holders = {svcs[n].get('ipc') for n in RING_USERS if n in svcs} | {svcs[n].get('pid') for n in RING_USERS if n in svcs}
    if len(holders) != 1 or not str(next(iter(holders))).startswith('service:'):
        probs.append(f'ring users do not all join one holder in ipc and pid: {holders}')
    else:
        h = svcs.get(next(iter(holders))[8:], {})
        if h.get('ipc') != 'shareable':
            probs.append('the holder\'s ipc is not shareable')
        lanes = conf_get(build, conf, 'ring.lanes')
        lane = conf_get(build, conf, 'ring.lane_size')
        shm = size_bytes(h.get('shm_size', '64m'))
        need = int(lanes or 0) * int(size_bytes(lane) or 0)
        if not shm or shm < need + (1 << 20):
            probs.append(f'holder shm_size {h.get("shm_size")} < ring {lanes} x {lane} plus header')
    for n in RING_USERS:
        s = svcs.get(n, {})
        if s.get('user') != '10001:10001':
            probs.append(f'{n}: not uid 10001 (the ring is created 0600)')
        if 'seccomp=unconfined' not in s.get('security_opt', []):
            probs.append(f'{n}: io_uring needs seccomp=unconfined (or a profile allowing it)')
    if conf_get(build, conf, 'exporter.ring_attach') != 'create':
        probs.append('deploy/shop.conf: [exporter] ring_attach is not create, yet the exporter starts first')
    T.problems(probs, 'compose ring users share one IPC+PID namespace holder with room for the ring, as uid 10001')

    # images pinned, environment documented, config mounted, peer names resolved
    probs = []
    for name, s in svcs.items():
        img = s.get('image', '')
        if not image_pinned(img):
            probs.append(f'{name}: image {img!r} is not pinned by tag')
        env = s.get('environment', {}) or {}
        if isinstance(env, list):
            env = dict(e.split('=', 1) for e in env)
        probs += env_problems(root, f'compose {name}', env)
        for var in str(env.get('SHOP_RESOLVE', '')).split():
            if var not in env:
                probs.append(f'{name}: SHOP_RESOLVE names {var}, which is not set')
        if name in SHOP_PROCS or name == 'shop-migrate':
            vols = s.get('volumes', [])
            if not any(str(v).startswith('./shop.conf:/etc/shop-trace/shop.conf') for v in vols):
                probs.append(f'{name}: deploy/shop.conf is not mounted at /etc/shop-trace/shop.conf')
    T.problems(probs, 'compose images pinned by tag, SHOP_*/OTEL_* variables documented, shop.conf mounted')

    # each container's configuration is valid for its process: the process's own
    # --check-config (its own rules too, e.g. numeric peer addresses) with the
    # container's environment as the entrypoint leaves it
    probs = []
    for name, s in svcs.items():
        if name not in SHOP_PROCS and name != 'shop-migrate':
            continue
        env = dict(os.environ, **{k: str(v) for k, v in resolve_like_entrypoint(s.get('environment', {})).items()})
        if name == 'shop-migrate':
            cmd = [os.path.join(build, 'shop-config'), 'check', '--config', conf]
        else:
            cmd = [os.path.join(build, SHOP_PROCS[name][0]), '--check-config', '--config', conf]
        rc, out = run(cmd, env=env)
        if rc != 0:
            probs.append(f'{name}: {out.strip()}')
    T.problems(probs, 'each process\'s --check-config accepts deploy/shop.conf with its compose environment')

    # pipeline wiring: exporter -> collector -> jaeger; prometheus -> exporter, gateway
    probs = []
    exp_env = svcs.get('shop-exporter', {}).get('environment', {})
    ep = exp_env.get('OTEL_EXPORTER_OTLP_TRACES_ENDPOINT', '')
    m = re.fullmatch(r'http://([a-z0-9-]+):(\d+)', ep)
    col = yaml.safe_load(open(os.path.join(root, 'deploy', 'otel-collector.yaml')))
    jae = yaml.safe_load(open(os.path.join(root, 'deploy', 'jaeger.yaml')))
    col_grpc = col['receivers']['otlp']['protocols']['grpc']['endpoint']
    if not m or m.group(1) != 'otel-collector' or not col_grpc.endswith(':' + m.group(2)):
        probs.append(f'exporter endpoint {ep!r} is not the Collector\'s OTLP/gRPC receiver {col_grpc}')
    jep = col['exporters']['otlp/jaeger']['endpoint']
    jgrpc = jae['receivers']['otlp']['protocols']['grpc']['endpoint']
    if jep.split(':')[0] not in svcs or not jgrpc.endswith(':' + jep.split(':')[1]):
        probs.append(f'Collector exports to {jep}, Jaeger receives on {jgrpc}')
    prom = yaml.safe_load(open(os.path.join(root, 'deploy', 'prometheus.yml')))
    targets = {sc['job_name']: t for sc in prom['scrape_configs'] for st in sc.get('static_configs', [])
               for t in st['targets']}
    for job, svc, key in (('shop-exporter', 'shop-exporter', 'exporter.metrics_port'), ('gateway', 'gateway', 'gateway.port')):
        want = f'{svc}:{conf_get(build, conf, key)}'
        if targets.get(job) != want:
            probs.append(f'prometheus job {job} scrapes {targets.get(job)}, the process serves {want}')
    T.problems(probs, 'compose wiring: exporter -> Collector -> Jaeger ports agree; Prometheus scrapes the served ports')

    # Grafana provisioning: datasource uid the dashboard uses, dashboards path mounted
    probs = []
    gdir = os.path.join(root, 'deploy', 'grafana')
    ds = yaml.safe_load(open(os.path.join(gdir, 'provisioning', 'datasources', 'prometheus.yaml')))
    uids = {d['uid'] for d in ds['datasources']}
    urls = {d['url'] for d in ds['datasources']}
    if 'http://prometheus:9090' not in urls:
        probs.append(f'datasource url {urls} is not the compose Prometheus')
    prov = yaml.safe_load(open(os.path.join(gdir, 'provisioning', 'dashboards', 'shop-trace.yaml')))
    dpath = prov['providers'][0]['options']['path']
    gvols = svcs.get('grafana', {}).get('volumes', [])
    if not any(str(v).split(':')[1] == dpath for v in gvols):
        probs.append(f'dashboards path {dpath} is not mounted into grafana ({gvols})')
    dash = json.load(open(os.path.join(gdir, 'dashboards', 'shop-trace.json')))
    for p in dash['panels']:
        for t in p.get('targets', []):
            if t.get('datasource', {}).get('uid') not in uids:
                probs.append(f'panel {p["title"]!r}: datasource {t.get("datasource")} is not provisioned')
    T.problems(probs, 'Grafana: the dashboard\'s datasource is provisioned, its folder mounted')


def dockerfile_stages(path):
    """target -> {'base': FROM, 'pkgs': apt packages, 'copies': [(src, dst)], 'user': USER, 'health': ...}"""
    stages, cur = {}, None
    text = open(path).read().replace('\\\n', ' ')
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith('#'):
            continue
        word, _, rest = line.partition(' ')
        word = word.upper()
        if word == 'FROM':
            m = re.fullmatch(r'(\S+)\s+AS\s+(\S+)', rest.strip(), re.I)
            base, name = (m.group(1), m.group(2)) if m else (rest.strip(), f'stage{len(stages)}')
            cur = stages[name] = {'base': base, 'pkgs': set(), 'copies': [], 'user': None, 'health': None, 'cmd': None}
        elif cur is None:
            continue
        elif word == 'RUN' and 'apt-get install' in rest:
            seg = rest.split('apt-get install', 1)[1].split('&&')[0]
            cur['pkgs'] |= {w for w in seg.split() if not w.startswith('-')}
        elif word == 'COPY':
            m = re.match(r'--from=(\S+)\s+(.*)', rest)
            if m:
                parts = m.group(2).split()
                cur['copies'] += [(m.group(1), p) for p in parts[:-1]]
        elif word == 'USER':
            cur['user'] = rest.strip()
        elif word == 'HEALTHCHECK':
            cur['health'] = rest
        elif word == 'CMD':
            cur['cmd'] = rest
    return stages


def chain(stages, name):
    out = []
    while name in stages:
        out.append(stages[name])
        name = stages[name]['base']
    return out, name


def needed_packages(binary):
    """Debian packages of the shared libraries binary links directly (readelf -d NEEDED)."""
    rc, out = run(['readelf', '-d', binary])
    if rc != 0:
        return None, out
    sonames = re.findall(r'\(NEEDED\)\s+Shared library: \[([^\]]+)\]', out)
    # the sanitizer build's runtimes: the images build without sanitizers
    sonames = [so for so in sonames if not re.match(r'lib(a|ub|t|l|hwa)san\.so', so)]
    rc, ldc = run(['ldconfig', '-p'])
    paths = {}
    for line in ldc.splitlines():
        m = re.match(r'\s*(\S+) \(libc6,x86-64[^)]*\) => (\S+)', line)
        if m:
            paths.setdefault(m.group(1), m.group(2))
    pkgs, missing = set(), []
    for so in sonames:
        p = paths.get(so)
        if p is None:
            missing.append(so)
            continue
        real = os.path.realpath(p)
        for cand in (p, real, '/usr' + p if not p.startswith('/usr') else p[4:]):
            rc, o = run(['dpkg', '-S', cand])
            if rc == 0:
                pkgs.add(o.split(':')[0].strip())
                break
        else:
            missing.append(so)
    return pkgs, missing


def check_dockerfile(root, build):
    path = os.path.join(root, 'deploy', 'Dockerfile')
    stages = dockerfile_stages(path)
    compose = yaml.safe_load(open(os.path.join(root, 'deploy', 'compose.yaml')))['services']
    targets = {s['build']['target'] for s in compose.values() if 'build' in s}
    probs = [f'compose builds target {t}, which the Dockerfile lacks' for t in targets if t not in stages]
    probs += [f'no Dockerfile target for {p}' for p in list(SHOP_PROCS) + ['shop-migrate'] if p not in stages]
    T.problems(probs, 'the Dockerfile has a target per process, and every target compose builds')

    probs = []
    for name in list(SHOP_PROCS) + ['shop-migrate']:
        if name not in stages:
            continue
        ch, root_base = chain(stages, name)
        if root_base != 'debian:12-slim':
            probs.append(f'{name}: runtime image based on {root_base}, not debian:12-slim')
        user = next((s['user'] for s in ch if s['user']), None)
        if user is None or user.split(':')[0] in ('0', 'root'):
            probs.append(f'{name}: runs as {user or "root"}')
        if name != 'shop-migrate':
            hc = next((s['health'] for s in ch if s['health']), '')
            if 'shop-probe' not in hc:
                probs.append(f'{name}: no shop-probe HEALTHCHECK')
        # the binary comes from the build stage, which builds with meson
        srcs = [src for s in ch for frm, src in s['copies'] if frm == 'build']
        binname = os.path.basename(SHOP_PROCS.get(name, ('db/shop-migrate',))[0])
        if f'/out/{binname}' not in srcs:
            probs.append(f'{name}: does not copy /out/{binname} from the build stage')
    bstage = stages.get('build', {})
    if not str(bstage.get('base', '')).startswith('debian:12'):
        probs.append(f'build stage based on {bstage.get("base")}, not Debian 12')
    for st in stages.values():
        if not image_pinned(st['base']) and st['base'] not in stages:
            probs.append(f'FROM {st["base"]} is not pinned by tag')
    T.problems(probs, 'Dockerfile: Debian 12 builder, debian:12-slim runtimes, non-root, one binary each, health check')

    # each runtime image installs the packages of the libraries its binaries link
    probs = []
    for name in list(SHOP_PROCS) + ['shop-migrate']:
        if name not in stages:
            continue
        ch, _ = chain(stages, name)
        have = set().union(*(s['pkgs'] for s in ch)) | {'libc6'}
        bins = {os.path.basename(src) for s in ch for frm, src in s['copies'] if frm == 'build'}
        for b in sorted(bins):
            rel = {'shop-ring': 'ipc/shop-ring', 'shop-probe': 'shop-probe', 'shop-config': 'shop-config',
                   'shop-migrate': 'db/shop-migrate'}.get(b) or next((v[0] for v in SHOP_PROCS.values()
                                                                      if os.path.basename(v[0]) == b), b)
            pkgs, missing = needed_packages(os.path.join(build, rel))
            if pkgs is None:
                probs.append(f'{name}: cannot read {rel}: {missing}')
                continue
            if missing:
                probs.append(f'{name}: {b}: no package found for {missing}')
            lack = sorted(p.split(':')[0] for p in pkgs if p.split(':')[0] not in have)
            if lack:
                probs.append(f'{name}: {b} links libraries of {lack}, which the image does not install')
    T.problems(probs, 'each runtime image installs the Debian packages of every library its binaries link (readelf NEEDED)')

    # the build stage's own meson command configures here and defines every path it copies
    text = open(path).read().replace('\\\n', ' ')
    m = re.search(r'meson setup /build ([^&]*?)\s*&&', text)
    copied = sorted(set(re.findall(r'/build/([A-Za-z0-9_./-]+)', text)))
    if not T.ok(m is not None and len(copied) >= 9, 'the Dockerfile builds with meson setup /build and copies the binaries',
                f'meson command found: {m is not None}; copied: {copied}'):
        return
    with tempfile.TemporaryDirectory(prefix='shop-dockersim-') as tmp:
        rc, out = run(['meson', 'setup', os.path.join(tmp, 'build'), root] + m.group(1).split(), timeout=300)
        if rc == 0:
            rc2, tg = run(['ninja', '-C', os.path.join(tmp, 'build'), '-t', 'targets', 'all'])
            targets = {l.split(':')[0] for l in tg.splitlines()}
            lack = [c for c in copied if c not in targets]
        T.ok(rc == 0 and not lack if rc == 0 else False,
             f'the Dockerfile\'s meson options ({" ".join(m.group(1).split())}) configure, and build all {len(copied)} binaries it copies',
             out[-1500:] if rc != 0 else f'not built with those options: {lack}')

    ign = os.path.join(root, 'deploy', 'Dockerfile.dockerignore')
    lines = open(ign).read().split() if os.path.exists(ign) else []
    T.ok('var' in lines and '.git' in lines, 'deploy/Dockerfile.dockerignore keeps var/ and .git out of the build context')


def check_collector(root):
    jaeger = os.path.join(root, 'var', 'tools', 'bin', 'jaeger')
    if not tool('jaeger', jaeger, 'jaeger validate accepts deploy/otel-collector.yaml and deploy/jaeger.yaml'):
        return
    for f in ('otel-collector.yaml', 'jaeger.yaml'):
        rc, out = run([jaeger, 'validate', '--config', os.path.join(root, 'deploy', f)])
        T.ok(rc == 0, f'jaeger validate (a real OpenTelemetry Collector build) accepts deploy/{f}',
             '\n'.join(l for l in out.splitlines() if 'application version' not in l))
    col = yaml.safe_load(open(os.path.join(root, 'deploy', 'otel-collector.yaml')))
    pipe = col['service']['pipelines']['traces']
    T.ok(pipe['receivers'] == ['otlp'] and 'batch' in pipe['processors'] and
         all(e.split('/')[0] == 'otlp' for e in pipe['exporters']),
         'the Collector\'s traces pipeline is OTLP receiver -> batch -> OTLP exporter', pipe)


def check_prometheus(root):
    promtool = shutil.which('promtool')
    if not tool('promtool', promtool or 'promtool', 'promtool check config'):
        return
    for f in ('deploy/prometheus.yml', 'deploy/k8s/prometheus.yml'):
        rc, out = run([promtool, 'check', 'config', os.path.join(root, f)])
        T.ok(rc == 0, f'promtool check config {f}', out)


# ----------------------------------------------------------------- Kubernetes

API = {'Namespace': 'v1', 'Service': 'v1', 'Secret': 'v1', 'ConfigMap': 'v1', 'Deployment': 'apps/v1',
       'StatefulSet': 'apps/v1', 'DaemonSet': 'apps/v1', 'Job': 'batch/v1'}
WORKLOADS = ('Deployment', 'StatefulSet', 'DaemonSet', 'Job')


def check_k8s(root, build):
    kdir = os.path.join(root, 'deploy', 'k8s')
    k8scheck = os.path.join(root, 'var', 'tools', 'bin', 'k8scheck')
    if tool('k8scheck', k8scheck, 'k8scheck decodes every manifest strictly into the k8s.io/api types'):
        files = sorted(os.path.join(kdir, f) for f in os.listdir(kdir) if f.endswith('.yaml'))
        rc, out = run([k8scheck] + files)
        T.ok(rc == 0, 'k8scheck decodes every manifest strictly into the k8s.io/api types '
             '(kinds, field names, value types)',
             '\n'.join(l for l in out.splitlines() if not l.endswith(': ok')))
    kust = yaml.safe_load(open(os.path.join(root, 'deploy', 'kustomization.yaml')))
    listed = kust.get('resources', [])
    on_disk = sorted(f'k8s/{f}' for f in os.listdir(kdir) if f.endswith('.yaml'))
    probs = [f'{r} listed in kustomization.yaml does not exist' for r in listed if r not in on_disk]
    probs += [f'{f} is not in kustomization.yaml resources' for f in on_disk if f not in listed]
    gen = {}
    for g in kust.get('configMapGenerator', []):
        keys = []
        for f in g.get('files', []):
            key, _, src = f.rpartition('=')
            src = src or f
            if not os.path.exists(os.path.join(root, 'deploy', src)):
                probs.append(f'ConfigMap {g["name"]}: file {src} does not exist')
            keys.append(key or os.path.basename(src))
        gen[g['name']] = keys
    if gen.get('shop-config') != ['shop.conf']:
        probs.append('no ConfigMap shop-config with key shop.conf generated from deploy/shop.conf')
    T.problems(probs, 'kustomization.yaml lists every manifest; ConfigMaps are generated from the files compose uses')

    docs = []
    for r in listed:
        if os.path.exists(os.path.join(root, 'deploy', r)):
            docs += [(r, d) for d in load_yaml_docs(os.path.join(root, 'deploy', r))]
    probs = []
    for f, d in docs:
        k = d.get('kind')
        if k not in API:
            probs.append(f'{f}: unexpected kind {k}')
        elif d.get('apiVersion') != API[k]:
            probs.append(f'{f}: {k} with apiVersion {d.get("apiVersion")}, want {API[k]}')
        if not d.get('metadata', {}).get('name'):
            probs.append(f'{f}: {k} without metadata.name')
        if k in WORKLOADS:
            spec = d.get('spec', {})
            tmpl = spec.get('template', {})
            if k != 'Job':
                sel = spec.get('selector', {}).get('matchLabels', {})
                labels = tmpl.get('metadata', {}).get('labels', {})
                if not sel or any(labels.get(a) != b for a, b in sel.items()):
                    probs.append(f'{f}: {k} selector {sel} does not match template labels {labels}')
            if not tmpl.get('spec', {}).get('containers'):
                probs.append(f'{f}: {k} without containers')
        if k == 'Service' and not d.get('spec', {}).get('ports'):
            probs.append(f'{f}: Service without ports')
    T.problems(probs, f'Kubernetes: {len(docs)} objects of known kinds with apiVersion, name, selectors matching labels')

    objs = {(d['kind'], d['metadata']['name']): d for _, d in docs}
    pods = {name: d['spec']['template'] for (k, name), d in objs.items() if k in WORKLOADS}

    # every process of ./shop up (and the migration) runs; the exporter per node
    probs = []
    for p in up_order(root):
        if UP_TO_COMPOSE.get(p) not in pods:
            probs.append(f'no workload for {p} ({UP_TO_COMPOSE.get(p)})')
    for want in ('otel-collector', 'prometheus', 'shop-migrate'):
        if want not in pods:
            probs.append(f'no workload {want}')
    if ('DaemonSet', 'shop-exporter') not in objs:
        probs.append('shop-exporter is not a DaemonSet')
    for n in set(SHOP_PROCS) - {'shop-exporter'}:
        if ('Deployment', n) not in objs:
            probs.append(f'{n} is not a Deployment')
    T.problems(probs, 'Kubernetes runs every process: the exporter as a DaemonSet, the services as Deployments')

    # containers: pinned images, resources, probes of the right kind on the configured ports
    conf = os.path.join(root, 'deploy', 'shop.conf')
    probs = []
    for name, t in pods.items():
        spec = t['spec']
        for c in spec.get('initContainers', []) + spec['containers']:
            if not image_pinned(c.get('image', '')):
                probs.append(f'{name}/{c["name"]}: image {c.get("image")} not pinned')
            res = c.get('resources', {})
            if not res.get('requests') or not res.get('limits'):
                probs.append(f'{name}/{c["name"]}: no resource requests and limits')
        if ('Job', name) in objs:
            continue
        c = spec['containers'][0]
        if not c.get('readinessProbe') or not c.get('livenessProbe'):
            probs.append(f'{name}: readiness and liveness probes missing')
        if name in SHOP_PROCS:
            env = {e['name']: e['value'] for e in c.get('env', []) if 'value' in e}
            port = int(conf_get(build, conf, SHOP_PROCS[name][1], resolve_like_entrypoint(env)) or 0)
            cports = {p['containerPort'] for p in c.get('ports', [])}
            if port not in cports:
                probs.append(f'{name}: containerPorts {cports} lack the configured port {port}')
            for pk in ('readinessProbe', 'livenessProbe'):
                pr = c.get(pk, {})
                if name in GRPC_SVCS:
                    if pr.get('grpc', {}).get('port') != port:
                        probs.append(f'{name}: {pk} is not a gRPC health probe on {port}: {pr}')
                elif pr.get('httpGet', {}).get('port') != port:
                    probs.append(f'{name}: {pk} is not an httpGet on {port}: {pr}')
    T.problems(probs, 'Kubernetes containers: pinned images, requests and limits, gRPC/HTTP probes on the configured ports')

    probs = []
    for name, t in pods.items():
        if name not in SHOP_PROCS:
            continue
        c = t['spec']['containers'][0]
        env = {e['name']: e['value'] for e in c.get('env', []) if 'value' in e}
        for e in c.get('env', []):   # secrets and the downward API: plausible stand-ins
            if 'valueFrom' in e:
                env[e['name']] = 'k8s-secret-or-field-stand-in'
        env = resolve_like_entrypoint(env)
        env['OTEL_RESOURCE_ATTRIBUTES'] = re.sub(r'\$\([A-Z_]+\)', 'x', env.get('OTEL_RESOURCE_ATTRIBUTES', 'a=b'))
        rc, out = run([os.path.join(build, SHOP_PROCS[name][0]), '--check-config', '--config', conf],
                      env=dict(os.environ, **env))
        if rc != 0:
            probs.append(f'{name}: {out.strip()}')
    T.problems(probs, 'each process\'s --check-config accepts the ConfigMap\'s shop.conf with its Kubernetes environment')

    # the ring: hostPID, one memory-backed hostPath at /dev/shm, uid 10001, io_uring allowed
    probs, paths = [], set()
    for name in RING_USERS:
        t = pods.get(name)
        if t is None:
            continue
        spec = t['spec']
        if spec.get('hostPID') is not True:
            probs.append(f'{name}: no hostPID (the ring checks holders by pid)')
        sc = spec.get('securityContext', {})
        if sc.get('runAsUser') != 10001:
            probs.append(f'{name}: runAsUser {sc.get("runAsUser")}, not 10001')
        if sc.get('seccompProfile', {}).get('type') not in ('Unconfined', 'Localhost'):
            probs.append(f'{name}: seccomp {sc.get("seccompProfile")} blocks io_uring')
        vols = {v['name']: v for v in spec.get('volumes', [])}
        mounts = {m['mountPath']: m['name'] for m in spec['containers'][0].get('volumeMounts', [])}
        v = vols.get(mounts.get('/dev/shm'), {})
        hp = v.get('hostPath', {}).get('path', '')
        if not hp.startswith('/dev/shm'):
            probs.append(f'{name}: /dev/shm is not a hostPath in the node\'s /dev/shm (tmpfs): {v}')
        paths.add(hp)
        inits = [c for c in spec.get('initContainers', [])
                 if any(m['mountPath'] == '/dev/shm' for m in c.get('volumeMounts', []))]
        if not inits or '10001' not in ' '.join(inits[0].get('command', [])):
            probs.append(f'{name}: no init container giving the ring directory to uid 10001')
    if len(paths) != 1:
        probs.append(f'ring pods mount different directories: {paths}')
    T.problems(probs, 'Kubernetes ring pods: hostPID, one hostPath under the node\'s /dev/shm at /dev/shm, uid 10001, seccomp allowing io_uring')

    # references: Services select pods with their target ports; configMaps, secrets, env documented
    probs = []
    for (k, name), d in objs.items():
        if k != 'Service':
            continue
        sel = d['spec'].get('selector', {})
        match = [t for t in pods.values() if all(t['metadata']['labels'].get(a) == b for a, b in sel.items())]
        if not match:
            probs.append(f'Service {name}: selector {sel} matches no pod')
            continue
        cports = {p['containerPort'] for c in match[0]['spec']['containers'] for p in c.get('ports', [])}
        for p in d['spec']['ports']:
            if p.get('targetPort', p['port']) not in cports:
                probs.append(f'Service {name}: targetPort {p.get("targetPort")} not a containerPort of its pods {cports}')
    secrets = {name: set(d.get('stringData', {})) | set(d.get('data', {})) for (k, name), d in objs.items() if k == 'Secret'}
    for name, t in pods.items():
        for v in t['spec'].get('volumes', []):
            cm = v.get('configMap', {}).get('name')
            if cm and cm not in gen and ('ConfigMap', cm) not in objs:
                probs.append(f'{name}: volume uses ConfigMap {cm}, which nothing defines')
        for c in t['spec'].get('initContainers', []) + t['spec']['containers']:
            names = []
            for e in c.get('env', []):
                names.append(e['name'])
                ref = e.get('valueFrom', {}).get('secretKeyRef')
                if ref and ref.get('key') not in secrets.get(ref.get('name'), set()):
                    probs.append(f'{name}: env {e["name"]} refers to secret {ref}, which does not exist')
            probs += env_problems(root, f'k8s {name}', names)
            envd = {e['name']: e.get('value', '') for e in c.get('env', [])}
            for var in envd.get('SHOP_RESOLVE', '').split():
                if var not in envd:
                    probs.append(f'{name}: SHOP_RESOLVE names {var}, which is not set')
    # the services' addresses name Services that exist
    svcnames = {name for (k, name) in objs if k == 'Service'}
    for name, t in pods.items():
        for e in t['spec']['containers'][0].get('env', []):
            v = e.get('value', '')
            if e['name'] in ('SHOP_POSTGRES_HOST', 'SHOP_REDIS_HOST', 'SHOP_PAYMENT_SVC_PROCESSOR_ADDRESS',
                             'SHOP_ORDER_SVC_INVENTORY_ADDRESS', 'SHOP_ORDER_SVC_PAYMENT_ADDRESS',
                             'SHOP_GATEWAY_USER_SVC', 'SHOP_GATEWAY_ORDER_SVC', 'SHOP_KAFKA_BOOTSTRAP_SERVERS',
                             'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT'):
                host = v.split('://')[-1].split(':')[0]
                if host not in svcnames:
                    probs.append(f'{name}: {e["name"]}={v} names no Service')
    T.problems(probs, 'Kubernetes references: Services select pods and ports; ConfigMaps, Secrets, peer Services exist; env documented')

    # Prometheus finds every exporter and gateway pod through headless Services
    probs = []
    prom = yaml.safe_load(open(os.path.join(kdir, 'prometheus.yml')))
    ns = kust.get('namespace')
    for sc in prom['scrape_configs']:
        for dsd in sc.get('dns_sd_configs', []):
            for n in dsd['names']:
                svc, nsn = n.split('.')[0], n.split('.')[1]
                d = objs.get(('Service', svc))
                if d is None or d['spec'].get('clusterIP') != 'None' or nsn != ns:
                    probs.append(f'{sc["job_name"]}: {n} is not a headless Service of namespace {ns}')
                elif dsd.get('port') not in {p['port'] for p in d['spec']['ports']}:
                    probs.append(f'{sc["job_name"]}: port {dsd.get("port")} is not a port of Service {svc}')
    jobs = {sc['job_name'] for sc in prom['scrape_configs']}
    if not {'shop-exporter', 'gateway'} <= jobs:
        probs.append(f'scrape jobs {jobs} lack shop-exporter or gateway')
    T.problems(probs, 'Kubernetes Prometheus scrapes each exporter and gateway pod through headless Services')


def files_main(root, build):
    check_parse_all(root)
    rc, out = run([os.path.join(build, 'shop-config'), 'check', '--config', os.path.join(root, 'deploy', 'shop.conf')])
    T.ok(rc == 0, 'shop-config check accepts deploy/shop.conf', out)
    check_compose(root, build)
    check_dockerfile(root, build)
    check_collector(root)
    check_prometheus(root)
    check_k8s(root, build)


# ======================================================================= live


def free_port():
    import random
    for _ in range(200):
        p = random.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(('127.0.0.1', p))
                return p
            except OSError:
                continue
    raise RuntimeError('no free port below 32768')


def wait_http(url, timeout=15):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError:
            time.sleep(0.1)
    return None, ''


def scrape_names(text):
    """metric name -> set of label names, from Prometheus text."""
    out = {}
    for line in text.splitlines():
        if line.startswith('# TYPE '):
            parts = line.split()
            out.setdefault(parts[2], set())
            if parts[3] == 'histogram':
                for suf in ('_bucket', '_sum', '_count'):
                    out.setdefault(parts[2] + suf, set())
            continue
        if not line or line.startswith('#'):
            continue
        m = re.match(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?', line)
        if m:
            labels = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', m.group(3) or ''))
            out.setdefault(m.group(1), set()).update(labels)
    return out


def start(cmd, env, log):
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop(p):
    if p and p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def live_main(root, build):
    conf = os.path.join(root, 'deploy', 'shop.conf')
    ring = f'/shop-deploytest-{os.getpid()}'
    tmp = tempfile.mkdtemp(prefix='shop-deploy-')
    log = open(os.path.join(tmp, 'procs.log'), 'w+')
    mport, gport, dead = free_port(), free_port(), free_port()
    base = dict(os.environ, SHOP_RING_NAME=ring, SHOP_RING_LANES='4', SHOP_RING_LANE_SIZE='64K',
                SHOP_RING_MAX_RECORD='16K')
    exp = gw = usv = None
    try:
        exp = start([os.path.join(build, 'exporter', 'shop-exporter'), '--config', conf], dict(
            base, SHOP_EXPORTER_METRICS_ADDRESS='127.0.0.1', SHOP_EXPORTER_METRICS_PORT=str(mport),
            OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=f'http://127.0.0.1:{dead}'), log)
        gw = start([os.path.join(build, 'services', 'gateway', 'gateway'), '--config', conf], dict(
            base, SHOP_GATEWAY_ADDRESS='127.0.0.1', SHOP_GATEWAY_PORT=str(gport),
            SHOP_GATEWAY_USER_SVC=f'127.0.0.1:{dead}', SHOP_GATEWAY_ORDER_SVC=f'127.0.0.1:{dead}'), log)
        st_e, _ = wait_http(f'http://127.0.0.1:{mport}/metrics')
        st_g, _ = wait_http(f'http://127.0.0.1:{gport}/metrics')
        log.seek(0)
        if not T.ok(st_e == 200 and st_g == 200, 'a real shop-exporter and gateway serve /metrics (deploy/shop.conf)',
                    f'exporter {st_e}, gateway {st_g}\n' + log.read()[-2000:]):
            return
        wait_http(f'http://127.0.0.1:{gport}/api/health')   # 503: upstreams down; counted by route and code
        _, etext = wait_http(f'http://127.0.0.1:{mport}/metrics')
        _, gtext = wait_http(f'http://127.0.0.1:{gport}/metrics')
        served = scrape_names(etext)
        for k, v in scrape_names(gtext).items():
            served.setdefault(k, set()).update(v)

        dash = json.load(open(os.path.join(root, 'deploy', 'grafana', 'dashboards', 'shop-trace.json')))
        exprs = [(p['title'], t['expr']) for p in dash['panels'] for t in p.get('targets', [])]
        probs, used = [], set()
        for title, e in exprs:
            names = set(re.findall(r'\b((?:shop|gateway)_[a-z0-9_]+)\b', e))
            if not names:
                probs.append(f'{title}: {e}: no shop-trace metric')
            for n in names:
                used.add(n)
                if n not in served:
                    probs.append(f'{title}: {n} is not served by the exporter or the gateway')
            labels = {n: served.get(n, set()) for n in names}
            for grp in re.findall(r'\bby\s*\(([^)]*)\)', e):
                for lab in (x.strip() for x in grp.split(',')):
                    if lab in ('instance', 'job'):
                        continue
                    if not any(lab in ls or (lab == 'le' and n.endswith('_bucket')) for n, ls in labels.items()):
                        probs.append(f'{title}: label {lab!r} is on none of {sorted(names)}')
        T.problems(probs, f'every Grafana query ({len(exprs)}) uses metric names and labels a real /metrics serves')
        want = {'request rate': 'gateway_requests_total', 'latency': 'gateway_request_duration_ms_bucket',
                'ring fill': 'shop_ring_fill_ratio', 'ring drops': 'shop_ring_spans_dropped_total',
                'exporter drops': 'shop_exporter_spans_dropped_total',
                'export rate': 'shop_exporter_spans_exported_total'}
        T.problems([f'no panel for {k} ({m})' for k, m in want.items() if m not in used],
                   'the dashboard shows request rate, errors, latency, ring fill, drops and export rate')
        scr = {}
        prom = yaml.safe_load(open(os.path.join(root, 'deploy', 'prometheus.yml')))
        for sc in prom['scrape_configs']:
            scr[sc['job_name']] = sc.get('metrics_path', '/metrics')
        T.ok(scr.get('shop-exporter') == '/metrics' and scr.get('gateway') == '/metrics',
             'Prometheus scrapes the path both processes serve their metrics on', scr)

        # shop-probe, the images' health check, against these processes
        probe = os.path.join(build, 'shop-probe')
        cases = [(['http', f'127.0.0.1:{gport}', '/metrics'], 0, 'HTTP 200'),
                 (['http', f'127.0.0.1:{gport}', '/api/health'], 1, 'HTTP 503 (upstreams down)'),
                 (['http', f'127.0.0.1:{mport}', '/metrics'], 0, 'the exporter\'s /metrics'),
                 (['http', f'127.0.0.1:{dead}', '/metrics'], 1, 'a closed port'),
                 (['grpc', f'127.0.0.1:{dead}'], 1, 'gRPC to a closed port'),
                 (['grpc', 'user-svc:9091'], 2, 'a host name (numeric only)'),
                 (['tcp', f'127.0.0.1:{gport}'], 2, 'an unknown check')]
        for args, want_rc, what in cases:
            rc, out = run([probe] + args, timeout=20)
            T.ok(rc == want_rc, f'shop-probe {" ".join(args[:1] + args[2:])}: {what} -> exit {want_rc}', f'exit {rc}: {out}')

        # a gRPC service up without its database answers NOT_SERVING: the probe says unhealthy
        uport = free_port()
        usv = start([os.path.join(build, 'services', 'user', 'user-svc'), '--config', conf], dict(
            base, SHOP_USER_SVC_ADDRESS='127.0.0.1', SHOP_USER_SVC_PORT=str(uport),
            SHOP_POSTGRES_HOST='127.0.0.1', SHOP_POSTGRES_PORT=str(dead), SHOP_REDIS_HOST='127.0.0.1',
            SHOP_REDIS_PORT=str(dead)), log)
        rc, out = 1, ''
        end = time.monotonic() + 15
        while time.monotonic() < end:
            rc, out = run([probe, 'grpc', f'127.0.0.1:{uport}', '--timeout', '1000'])
            if 'SERVING' in out or 'status' in out:
                break
            time.sleep(0.2)
        T.ok(rc == 1 and 'not SERVING' in out, 'shop-probe grpc: user-svc without PostgreSQL answers NOT_SERVING -> exit 1',
             f'exit {rc}: {out}')
    finally:
        for p in (usv, gw, exp):
            stop(p)
        try:
            os.unlink('/dev/shm' + ring)
        except OSError:
            pass
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)

    # the images' entrypoint: host names in SHOP_RESOLVE variables become numeric addresses
    ep = os.path.join(root, 'deploy', 'docker', 'entrypoint.sh')
    env = dict(os.environ, SHOP_RESOLVE='A B C D', A='localhost', B='http://localhost:4317',
               C='localhost:9091', D='10.1.2.3:5')
    rc, out = run(['sh', ep, 'sh', '-c', 'echo "A=$A B=$B C=$C D=$D"'], env=env)
    T.ok(rc == 0 and 'A=127.0.0.1 B=http://127.0.0.1:4317 C=127.0.0.1:9091 D=10.1.2.3:5' in out,
         'entrypoint resolves host, scheme://host:port and host:port, leaves numeric ones', out)
    env = dict(os.environ, SHOP_RESOLVE='X', X='no-such-host.invalid:1', SHOP_RESOLVE_TIMEOUT='0')
    rc, out = run(['sh', ep, 'true'], env=env)
    T.ok(rc == 1 and 'X=no-such-host.invalid:1' in out, 'entrypoint refuses a name that does not resolve, naming the variable', out)
    rc, out = run(['sh', ep, 'true'], env=dict(os.environ, SHOP_RESOLVE='UNSET_VAR_X'))
    T.ok(rc == 1 and 'UNSET_VAR_X' in out, 'entrypoint refuses a SHOP_RESOLVE name that is not set', out)


def main():
    if len(sys.argv) != 4 or sys.argv[1] not in ('files', 'live'):
        print('usage: test_deploy.py files|live ROOT BUILD', file=sys.stderr)
        return 2
    mode, root, build = sys.argv[1], os.path.abspath(sys.argv[2]), os.path.abspath(sys.argv[3])
    try:
        (files_main if mode == 'files' else live_main)(root, build)
    except Exception as e:  # a broken file must fail a case, not hide the rest
        import traceback
        T.ok(False, f'{mode} checks ran to the end', traceback.format_exc())
    return T.done()


if __name__ == '__main__':
    sys.exit(main())
