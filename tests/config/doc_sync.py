#!/usr/bin/env python3
"""Keeps docs/CONFIG.md's key table equal to `shop-config doc` (the key table in core/config.h).

  doc_sync.py SHOP_CONFIG_BIN DOCS/CONFIG.md           check, TAP output (a test in the unit suite)
  doc_sync.py SHOP_CONFIG_BIN DOCS/CONFIG.md --write   rewrite the generated block
"""
import subprocess
import sys

BEGIN = '<!-- BEGIN shop-config doc -->'
END = '<!-- END shop-config doc -->'


def main():
    binary, doc = sys.argv[1], sys.argv[2]
    table = subprocess.run([binary, 'doc'], check=True, capture_output=True, text=True).stdout.strip()
    text = open(doc).read()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    current = rest.split(END, 1)[0].strip()
    if '--write' in sys.argv:
        open(doc, 'w').write(f'{head}{BEGIN}\n{table}\n{END}{tail}')
        return 0
    ok = current == table
    print(f'{"ok" if ok else "not ok"} 1 - docs/CONFIG.md lists every key exactly as core/config.h declares it')
    if not ok:
        print('# regenerate: python3 tests/config/doc_sync.py var/build/main/shop-config docs/CONFIG.md --write')
    print('1..1')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
