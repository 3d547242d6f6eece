#!/usr/bin/env python3
"""Runs the Python suites (tests/py) with pytest in var/venv and reports each test case as TAP,
so meson's e2e suite and ./shop test count them one by one.

  run_tap.py ROOT [pytest args...]
"""
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET


def main():
    root = sys.argv[1]
    py = os.path.join(root, 'var', 'venv', 'bin', 'python')
    if not os.access(py, os.X_OK):
        print('not ok 1 - var/venv exists (run tests/py/setup.sh; ./shop test does)')
        print('1..1')
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        junit = os.path.join(tmp, 'junit.xml')
        proc = subprocess.run([py, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', f'--junitxml={junit}',
                               *(sys.argv[2:] or [os.path.join(root, 'tests', 'py')])],
                              cwd=root, capture_output=True, text=True)
        if not os.path.exists(junit):
            sys.stdout.write(''.join('# ' + l + '\n' for l in (proc.stdout + proc.stderr).splitlines()[-40:]))
            print('not ok 1 - pytest ran and wrote its report')
            print('1..1')
            return 1
        n = failed = 0
        for case in ET.parse(junit).getroot().iter('testcase'):
            n += 1
            name = f"{case.get('classname')}::{case.get('name')}"
            bad = case.find('failure') if case.find('failure') is not None else case.find('error')
            if bad is not None:
                failed += 1
                print(f'not ok {n} - {name}')
                for line in (bad.get('message') or '').splitlines()[:20]:
                    print(f'# {line}')
            elif case.find('skipped') is not None:
                print(f'ok {n} - {name} # SKIP {case.find("skipped").get("message", "")}')
            else:
                print(f'ok {n} - {name}')
        print(f'1..{n}')
        return 1 if failed or n == 0 else 0


if __name__ == '__main__':
    sys.exit(main())
