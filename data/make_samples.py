"""Write the bundled TCM sample datasets from the fact tables (stdlib only, deterministic output).

    python data/make_samples.py           # write the files
    python data/make_samples.py --check   # write, then validate them

Outputs (UTF-8, no BOM) in data/:
    tcm_qa.json            alpaca QA: herbs, formulas, syndromes, theory, integrated medicine
    tcm_corpus.txt         monographs and theory prose for continued pre-training (paragraphs, blank-line separated)
    tcm_mcq.csv            C-Eval-layout multiple choice (id,question,A,B,C,D,E,answer,subject)
    tcm_mcq_dev.csv        5 few-shot questions per subject, same layout
    medical_textbook.txt   textbook-style integrated Chinese-Western medicine prose

Facts live in facts_herbs.py, facts_formulas.py and facts_theory.py; this file only turns them into records.
The content is teaching material for demonstrating fine-tuning, not medical advice.
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from facts_formulas import FORMULA_CATEGORIES, FORMULAS  # noqa: E402
from facts_herbs import HERB_CATEGORIES, HERBS, SHIBAFAN, SHIJIUWEI, SPECIAL_DECOCTION  # noqa: E402
from facts_theory import (  # noqa: E402
    ACU_MCQ,
    DISEASES,
    INTEG_MCQ,
    INTEGRATED_QA,
    LIUYIN,
    PULSES,
    QIQING,
    SYNDROMES,
    THEORY,
    TONGUES,
    WUXING,
    ZANG,
)

SEED = 20240607
DISCLAIMER = "具体用药请在执业医师或药师指导下进行。"
CASE_NOTE = "以上为教学示例，具体诊治请在执业医师指导下进行。"
PHARMACOPOEIA = "《中国药典》（2020年版）"
MIN_CHARS, MAX_CHARS = 40, 220
SUBJECTS = ["中药学", "方剂学", "中医基础理论", "中医诊断学", "针灸学", "中西医结合"]
MCQ_HEADER = ["id", "question", "A", "B", "C", "D", "E", "answer", "subject"]
LETTERS = "ABCDE"
FIVE_SHARE = 0.25  # chance that a generated question gets five options (hand-written ones have their own)

OUT_QA = HERE / "tcm_qa.json"
OUT_CORPUS = HERE / "tcm_corpus.txt"
OUT_MCQ = HERE / "tcm_mcq.csv"
OUT_MCQ_DEV = HERE / "tcm_mcq_dev.csv"
OUT_TEXTBOOK = HERE / "medical_textbook.txt"

MINIMUMS = {"qa": 320, "mcq": 160, "mcq_per_subject": 20, "dev_per_subject": 5, "corpus_bytes": 210 * 1024,
            "textbook_bytes": 30 * 1024, "herbs": 100, "formulas": 50, "integrated_qa": 30}


# ---------------------------------------------------------------------------------------------
# Text helpers
# ---------------------------------------------------------------------------------------------

def _clip(text: str, limit: int) -> str:
    """Shorten text to at most `limit` characters at a clause boundary, marking a cut list with "等"."""
    text = text.rstrip("。")
    if len(text) <= limit:
        return text
    for marks in ("。", "；", "，、"):
        cut = max(text.rfind(m, 0, limit - 1) for m in marks)
        if cut > limit // 3:
            head = text[:cut].rstrip("，、；。")
            return head if marks in ("。", "；") else head + "等"
    return text[:limit - 1] + "等"


def _answer(parts: list[str], tail: str = "", limit: int = MAX_CHARS, extra: tuple[str, ...] = ()) -> str:
    """Join sentences, dropping trailing optional ones (and clipping the last) to stay within `limit`.

    `extra` sentences are appended only when the answer would otherwise be shorter than MIN_CHARS.
    """
    parts = [_end(p) for p in parts if p]
    short = sum(len(p) for p in parts) + len(tail) < MIN_CHARS
    parts += [_end(p) for p in extra if p and short]
    budget = limit - len(tail)
    out = ""
    for part in parts:
        if len(out) + len(part) <= budget:
            out += part
        elif not out:
            out = _clip(part, budget - 1) + "。"
            break
        else:
            room = budget - len(out) - 1
            if room >= 20:
                out += _clip(part, room) + "。"
            break
    return out + tail


def _end(part: str) -> str:
    """End a sentence with one full stop (a closing quote after 。 already ends it)."""
    if part.endswith(("。”", "？”", "！”")):
        return part
    return part.rstrip("。") + "。"


def _split_xw(xw: str) -> tuple[str, str, str]:
    """"辛、甘，大热；有毒" -> ("辛、甘", "大热", "有毒")."""
    main, _, tox = xw.partition("；")
    taste, _, nature = main.partition("，")
    return taste, nature, tox


def _xw_phrase(h: dict) -> str:
    taste, nature, tox = _split_xw(h["xw"])
    return f"味{taste}，性{nature}" + (f"，{tox}" if tox else "")


def _sent(s: str) -> str:
    return _end(s) if s else ""


def _pick(templates: list[str], i: int) -> str:
    return templates[i % len(templates)]


# ---------------------------------------------------------------------------------------------
# QA (alpaca)
# ---------------------------------------------------------------------------------------------

HERB_T = {
    "xw": ["{n}的性味归经是什么？", "请说明中药{n}的性味与归经。", "{n}味什么、性什么？归哪些经？",
           "从性味归经的角度介绍一下{n}。"],
    "gx": ["{n}有哪些功效？", "中药{n}的主要功效是什么？", "简述{n}的功效及其所属类别。", "{n}在中药学里能起到什么作用？",
           "请列出{n}的功效。"],
    "yy": ["{n}临床上主要用于治疗哪些病证？", "{n}的主治病证有哪些？", "哪些情况下可以考虑使用{n}？",
           "请介绍{n}的临床应用。"],
    "yl": ["{n}的常用剂量是多少？使用时要注意什么？", "{n}怎么用？用量多少？", "请说明{n}的用法用量和使用注意。",
           "服用{n}有什么剂量要求和禁忌？"],
}
FORMULA_T = {
    "zc": ["{n}由哪些药物组成？", "{n}的组成是什么？", "请写出{n}的出处和药物组成。", "{n}出自哪部著作？由什么药组成？"],
    "gy": ["{n}的功用是什么？", "{n}有什么作用？", "简述{n}的功用和所属分类。", "{n}属于哪类方剂？功用是什么？"],
    "zz": ["{n}主治什么证候？", "{n}适用于哪些病证？", "什么情况下可以用{n}？", "请说明{n}的主治。"],
    "fj": ["请简要分析{n}的方解。", "{n}的配伍意义是什么？", "{n}是如何组方配伍的？", "谈谈{n}的组方思路。"],
}
SYNDROME_T = {
    "bx": ["{n}有哪些临床表现？", "{n}的典型症状、舌象和脉象是什么？", "如何辨识{n}？", "{n}的辨证要点有哪些？"],
    "zf": ["{n}应如何治疗？", "{n}的治法和代表方是什么？", "中医治疗{n}常用什么方？", "{n}该采用什么治法？"],
    "case": ["根据以下症状判断证型并给出治法", "请根据下列病情进行辨证，并给出治法和代表方",
             "阅读以下病例，判断中医证型并提出治法", "以下是一位患者的四诊资料，请辨证论治"],
}
THEORY_T = {
    "wx": ["{n}在五行中属什么？与哪些形体官窍、情志相应？", "请说明{n}的五行归属及其对应关系。",
           "按五行学说，{n}与哪些事物相关联？", "{n}在五行归类中有哪些对应？"],
    "zang": ["{n}的主要生理功能有哪些？", "请简述{n}的生理功能。", "中医认为{n}主管什么？", "{n}有哪些生理特性和别称？"],
    "pulse": ["{n}的脉象特点和主病是什么？", "什么是{n}？主什么病？", "请描述{n}的指下感觉及临床意义。",
              "{n}有何特征？提示什么病证？"],
    "tongue": ["{n}有什么特征？主什么病证？", "舌诊中见到{n}提示什么？", "请说明{n}的表现和临床意义。",
               "{n}的诊断意义是什么？"],
    "liuyin": ["{n}的性质和致病特点是什么？", "中医认为{n}致病有哪些特点？", "请简述{n}的致病特点。",
               "{n}伤人有何特点？"],
}

# Demographics cycled deterministically for the case records.
_AGES = [34, 46, 58, 27, 63, 41, 52, 69, 38, 55, 30, 61, 44, 49, 72, 36]


def _case_sex(s: dict, i: int) -> str:
    text = s["zz"] + s["name"] + s["bing"]
    if any(w in text for w in ("月经", "带下", "妇女", "崩漏", "产后")):
        return "女"
    if any(w in text for w in ("阳痿", "遗精")):
        return "男"
    return "男" if i % 2 else "女"


def _herb_qa(i: int, h: dict) -> list[dict]:
    n = h["name"]
    recs = []
    ans = _answer([f"按{PHARMACOPOEIA}，{n}{_xw_phrase(h)}，归{h['gj']}", f"本品在《中药学》中属{h['cat']}",
                   f"功能{h['gx']}"], extra=(f"临床用于{h['yy']}",))
    recs.append(("xw", ans))
    ans = _answer([f"{n}的功效为{h['gx']}", f"本品{_xw_phrase(h)}，归{h['gj']}，在《中药学》中属{h['cat']}",
                   h["note"]], extra=(f"临床用于{h['yy']}",))
    recs.append(("gx", ans))
    ans = _answer([f"{n}功能{h['gx']}", f"临床用于{h['yy']}", h["note"]],
                  extra=(f"本品{_xw_phrase(h)}，归{h['gj']}，属{h['cat']}",))
    recs.append(("yy", ans))
    zy = f"使用注意：{h['zy']}" if h["zy"] else f"{n}功能{h['gx']}，使用时应辨证选用"
    ans = _answer([f"按{PHARMACOPOEIA}，{n}的用法用量为{h['yl']}", zy], tail=DISCLAIMER)
    recs.append(("yl", ans))
    out = []
    for j, (kind, output) in enumerate(recs):
        out.append({"instruction": _pick(HERB_T[kind], i + j).format(n=n), "input": "", "output": output})
    return out


def _zz(f: dict) -> str:
    """"外感风寒表实证。恶寒发热..." -> "外感风寒表实证，症见恶寒发热..." for use inside a sentence."""
    head, dot, rest = f["zz"].partition("。")
    if dot and rest and not rest.startswith("亦"):
        return f"{head}，症见{rest}"
    return f["zz"]


def _formula_qa(i: int, f: dict) -> list[dict]:
    n = f["name"]
    zc = "、".join(f["zc"])
    recs = [
        ("zc", _answer([f"{n}出自{f['src']}，由{zc}组成", f"本方属{f['cat']}，功用{f['gy']}",
                        f"用法：{f['yf']}" if f["yf"] else ""], extra=(f"主治{_zz(f)}",))),
        ("gy", _answer([f"{n}属{f['cat']}，功用为{f['gy']}", f"主治{_zz(f)}"], extra=(f"方由{zc}组成",))),
        ("zz", _answer([f"{n}功用{f['gy']}，主治{_zz(f)}", f"使用注意：{f['zy']}" if f["zy"] else ""],
                       tail=DISCLAIMER)),
    ]
    if f["fj"]:
        recs.append(("fj", _answer([f"{n}由{zc}组成，功用{f['gy']}", f"方解：{f['fj']}"])))
    return [{"instruction": _pick(FORMULA_T[k], i + j).format(n=n), "input": "", "output": o}
            for j, (k, o) in enumerate(recs)]


def _syndrome_qa(i: int, s: dict) -> list[dict]:
    n = s["name"]
    out = [
        {"instruction": _pick(SYNDROME_T["bx"], i).format(n=n), "input": "",
         "output": _answer([f"{n}常见于{s['bing']}等病，主要表现为{s['zz']}，{s['she']}，{s['mai']}",
                            f"治宜{s['zf']}，代表方为{s['fang']}"])},
        {"instruction": _pick(SYNDROME_T["zf"], i + 1).format(n=n), "input": "",
         "output": _answer([f"{n}的治法为{s['zf']}，代表方为{s['fang']}",
                            f"辨证依据为{s['zz']}，{s['she']}，{s['mai']}"], tail=DISCLAIMER)},
    ]
    sex = _case_sex(s, i)
    age = _AGES[i % len(_AGES)]
    case = f"患者，{sex}，{age}岁。主要表现：{s['zz']}。舌象：{s['she']}。脉象：{s['mai']}。"
    out.append({"instruction": _pick(SYNDROME_T["case"], i), "input": case,
                "output": _answer([f"辨证：{n}（{s['bing']}）", f"依据：{s['zz']}，{s['she']}，{s['mai']}",
                                   f"治法：{s['zf']}", f"代表方：{s['fang']}"], tail=CASE_NOTE)})
    return out


def _theory_qa() -> list[dict]:
    out = []
    for i, w in enumerate(WUXING):
        z = w["zang"]
        ans = _answer([f"{z}在五行中属{w['xing']}，与{w['fu']}相表里，开窍于{w['guan']}，在体合{w['ti']}，其华在{w['hua']}",
                       f"在志为{w['zhi']}，在液为{w['ye']}，在色为{w['se']}，在味为{w['wei']}，与{w['ji']}季和{w['qi']}气相通应",
                       "这种归类体现了以五脏为中心的整体观念"])
        out.append({"instruction": _pick(THEORY_T["wx"], i).format(n=z), "input": "", "output": ans})
    for i, (z, d) in enumerate(ZANG.items()):
        w = next(x for x in WUXING if x["zang"] == z)
        ans = _answer([f"{z}的主要生理功能是{d['gn']}", f"{z}有“{d['alias']}”之称",
                       f"{z}在五行属{w['xing']}，在体合{w['ti']}，开窍于{w['guan']}，在志为{w['zhi']}，在液为{w['ye']}"])
        out.append({"instruction": _pick(THEORY_T["zang"], i).format(n=z), "input": "", "output": ans})
    for i, (name, feat, zhu) in enumerate(PULSES):
        ans = _answer([f"{name}的脉象特点是{feat}", f"{name}主{zhu}", "临床诊脉须四诊合参，不可单凭脉象下结论"])
        out.append({"instruction": _pick(THEORY_T["pulse"], i).format(n=name), "input": "", "output": ans})
    for i, (name, feat, zhu) in enumerate(TONGUES):
        ans = _answer([f"{name}的特征是{feat}", f"临床意义：多主{zhu}", "舌诊应结合舌质与舌苔综合分析，并与其他诊法合参"])
        out.append({"instruction": _pick(THEORY_T["tongue"], i).format(n=name), "input": "", "output": ans})
    for i, (name, trait) in enumerate(LIUYIN):
        ans = _answer([f"{name}的性质和致病特点是：{trait}", "六淫致病多与季节气候、居处环境有关，可单独致病，也可相兼为病"])
        out.append({"instruction": _pick(THEORY_T["liuyin"], i).format(n=name), "input": "", "output": ans})
    qiqing = "，".join(f"{a}则{b}" for a, b in QIQING)
    out.append({"instruction": "《素问·举痛论》如何论述七情对气机的影响？", "input": "",
                "output": _answer([f"《素问·举痛论》指出：“{qiqing}”", "此外，“怒伤肝，喜伤心，思伤脾，忧伤肺，恐伤肾”，"
                                   "说明七情内伤可直接损伤相应内脏并扰乱气机"])})
    for question, title, k in SECTION_QA:
        out.append({"instruction": question, "input": "", "output": _answer([THEORY[title][k]])})
    return out


# Hand-picked questions answered by one paragraph of the theory text: (question, section, paragraph index).
SECTION_QA = [
    ("什么是阴阳？中医如何运用阴阳学说？", "阴阳学说", 0), ("阴阳之间有哪些基本关系？", "阴阳学说", 1),
    ("阴阳失调会导致哪些病理变化？", "阴阳学说", 3), ("五行的特性是什么？", "五行学说", 0),
    ("五行之间的相生相克关系是怎样的？", "五行学说", 2), ("什么是五行的相乘、相侮和母子相及？", "五行学说", 3),
    ("根据五行规律确定的治法有哪些？", "五行学说", 4), ("五脏、六腑和奇恒之腑有什么区别？", "藏象学说", 0),
    ("六腑各有什么生理功能？", "藏象学说", 6), ("脏与腑之间的表里关系是怎样的？", "藏象学说", 7),
    ("人体之气从何而来？什么是气机和气化？", "气血津液", 0), ("气有哪些生理功能？人体之气如何分类？", "气血津液", 1),
    ("血是如何生成和运行的？", "气血津液", 2), ("津和液有什么区别？津液代谢依赖哪些脏腑？", "气血津液", 3),
    ("怎样理解“气为血之帅，血为气之母”？", "气血津液", 4), ("经络系统由哪些部分组成？", "经络学说", 0),
    ("十二经脉的走向和流注次序是怎样的？", "经络学说", 1), ("奇经八脉包括哪些？任、督、冲、带各有何特点？", "经络学说", 2),
    ("什么是三因学说？现代教材如何分类病因？", "病因学说", 0), ("风邪和寒邪的致病特点是什么？", "病因学说", 2),
    ("暑邪和湿邪的致病特点是什么？", "病因学说", 3), ("七情内伤如何致病？", "病因学说", 5),
    ("痰饮和瘀血的致病特点是什么？", "病因学说", 6), ("中医四诊包括哪些内容？", "诊法", 0),
    ("什么是假神？五色主病各是什么？", "诊法", 1), ("舌诊主要观察什么？正常舌象是怎样的？", "诊法", 2),
    ("寸口脉的寸关尺如何分候脏腑？正常脉象有何特点？", "诊法", 3), ("什么是八纲辨证？", "八纲辨证", 0),
    ("表证有哪些主要表现？", "八纲辨证", 1), ("寒证与热证各有哪些表现？", "八纲辨证", 2),
    ("虚证与实证如何区分？", "八纲辨证", 3), ("什么是六经辨证？", "六经辨证", 0),
    ("太阳病的提纲和主要证型是什么？", "六经辨证", 1), ("阳明病经证与腑证如何区分？", "六经辨证", 2),
    ("少阳病有哪些表现？如何治疗？", "六经辨证", 3), ("什么是卫气营血辨证？", "卫气营血辨证", 0),
    ("卫分证和气分证各有什么特点？", "卫气营血辨证", 1), ("叶天士提出的卫气营血治疗大法是什么？", "卫气营血辨证", 3),
    ("什么是正治与反治？", "治则治法", 1), ("中医“八法”指什么？", "治则治法", 2),
]


def build_qa() -> list[dict]:
    records: list[dict] = []
    for i, h in enumerate(HERBS):
        records += _herb_qa(i, h)
    for i, f in enumerate(FORMULAS):
        records += _formula_qa(i, f)
    for i, s in enumerate(SYNDROMES):
        records += _syndrome_qa(i, s)
    records += _theory_qa()
    for q, a in INTEGRATED_QA:
        records.append({"instruction": q, "input": "", "output": a})
    return records


# ---------------------------------------------------------------------------------------------
# Corpus and textbook
# ---------------------------------------------------------------------------------------------

def _sub(cat: str) -> str:
    return cat.split("·")[-1]


def _grouped(items: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for item in items:
        groups.setdefault(_top(item["cat"]), []).append(item)
    return groups


def _herb_monograph(h: dict) -> str:
    n = h["name"]
    parts = [f"【{n}】{n}，来源为{h['src']}" if h["src"] else f"【{n}】",
             f"在《中药学》中归属{h['cat']}",
             f"性味归经：{h['xw']}；归{h['gj']}",
             f"功效：{h['gx']}",
             f"应用：用于{h['yy']}",
             f"用法用量：{h['yl']}",
             f"使用注意：{h['zy']}" if h["zy"] else "",
             h["note"]]
    body = "".join(_sent(p) for p in parts)
    body += f"概言之，{n}{_xw_phrase(h)}，入{h['gj'].removesuffix('经')}经，以{h['gx'].split('，')[0]}为主要功用。"
    peers = [o["name"] for o in HERBS if o["cat"] == h["cat"] and o is not h]
    if peers:
        body += f"本资料所收{_sub(h['cat'])}中，与{n}同类的还有{'、'.join(peers)}。"
    return body


def _formula_monograph(f: dict) -> str:
    n = f["name"]
    parts = [f"【{n}】{n}出自{f['src']}，属{f['cat']}",
             f"组成：{'、'.join(f['zc'])}",
             f"用法：{f['yf']}" if f["yf"] else "",
             f"功用：{f['gy']}",
             f"主治：{f['zz']}",
             f"方解：{f['fj']}" if f["fj"] else "",
             f"使用注意：{f['zy']}" if f["zy"] else ""]
    body = "".join(_sent(p) for p in parts)
    peers = [o["name"] for o in FORMULAS if o["cat"] == f["cat"] and o is not f]
    if peers:
        body += f"本资料所收{_sub(f['cat'])}类方剂中，与{n}同类的还有{'、'.join(peers)}。"
    return body


def _syndrome_para(s: dict) -> str:
    return (f"【{s['name']}】{s['name']}常见于{s['bing']}。临床表现：{s['zz']}。舌象：{s['she']}。脉象：{s['mai']}。"
            f"治法：{s['zf']}。代表方：{s['fang']}。")


class _Doc:
    """Paragraphs joined by blank lines; a heading is kept on the line above the paragraph that follows it."""

    def __init__(self) -> None:
        self.paras: list[str] = []
        self.pending: list[str] = []

    def head(self, text: str) -> None:
        self.pending.append(text)

    def add(self, *texts: str) -> None:
        for text in texts:
            self.paras.append("\n".join([*self.pending, text.strip()]))
            self.pending = []

    def text(self) -> str:
        assert not self.pending, self.pending
        return "\n\n".join(self.paras) + "\n"


def build_corpus() -> str:
    doc = _Doc()
    doc.head("中药学概要")
    doc.add("中药是在中医理论指导下用于预防、诊断和治疗疾病的药物。以下各条按《中国药典》（2020年版）与《中药学》教材的体例，"
            "依次介绍药物的来源、性味归经、功效、应用、用法用量和使用注意。")
    for top, herbs in _grouped(HERBS).items():
        doc.head(top)
        doc.add(HERB_CATEGORIES[top], *(_herb_monograph(h) for h in herbs))
    fan = "；".join(f"{a}反{b}" for a, b in SHIBAFAN)
    wei = "，".join(f"{a}畏{b}" for a, b in SHIJIUWEI)
    doc.head("配伍禁忌与特殊煎服法")
    doc.add(f"配伍禁忌方面，“十八反”指：{fan}。“十九畏”指：{wei}。现行《中国药典》在相关药材的注意项下多以"
            "“不宜同用”的形式加以规定，临床应遵照执行。")
    special = "；".join(f"宜{how}的有{'、'.join(names)}" for how, names in SPECIAL_DECOCTION.items())
    doc.add(f"特殊煎服法方面，按本资料所收药物的用法用量归纳：{special}。先煎多用于矿石、介壳类药物及需久煎减毒的附子、"
            "川乌等；后下多用于含挥发性成分或久煎有效成分易被破坏的药物；包煎多用于细小种子、花粉类及有绒毛的药物。")
    doc.head("方剂学概要")
    doc.add("方剂是在辨证审因、确定治法之后，选择合适的药物，酌定用量，按照组方结构的要求妥善配伍而成。"
            "组方以君、臣、佐、使为基本结构。以下各条介绍常用方剂的出处、组成、用法、功用、主治与方解。")
    for top, formulas in _grouped(FORMULAS).items():
        doc.head(top)
        doc.add(FORMULA_CATEGORIES[top], *(_formula_monograph(f) for f in formulas))
    doc.head("中医基础理论与诊断学")
    for title, items in THEORY.items():
        doc.head(title)
        doc.add(*items)
    doc.head("常见脉象")
    doc.add(*(f"{name}：脉象特点为{feat}，主{zhu}。" for name, feat, zhu in PULSES))
    doc.head("常见舌象")
    doc.add(*(f"{name}：{feat}，多主{zhu}。" for name, feat, zhu in TONGUES))
    doc.head("常见证候")
    doc.add(*(_syndrome_para(s) for s in SYNDROMES))
    return doc.text()


def build_textbook() -> str:
    doc = _Doc()
    numerals = "一二三四五六七八九十"
    doc.head("中西医结合内科学基础（示例教材）")
    doc.add("本教材以中医基础理论、诊断学和中西医结合的常见病防治为主要内容，供模型继续预训练演示使用，不构成医疗建议。")
    chapters = [("中医基础理论", ("阴阳学说", "五行学说", "藏象学说", "气血津液", "经络学说", "病因学说")),
                ("诊法与辨证", ("诊法", "八纲辨证", "脏腑辨证", "六经辨证", "卫气营血辨证", "治则治法"))]
    chapter = 0
    for name, titles in chapters:
        chapter += 1
        doc.head(f"第{numerals[chapter - 1]}章 {name}")
        for k, title in enumerate(titles):
            doc.head(f"第{numerals[k]}节 {title}")
            doc.add(*THEORY[title])
    for d in DISEASES:
        chapter += 1
        n = d["name"]
        doc.head(f"第{numerals[chapter - 1]}章 {n}")
        doc.head(f"一、{n}的西医学概述")
        doc.add(*d["west"])
        doc.head(f"二、{n}的中医学认识（{d['tcm']}）")
        doc.add(*d["tcm_text"])
        doc.head(f"三、{n}的辨证论治")
        doc.add(*(f"（{numerals[k]}）{name}。主症：{zz}。治法：{zf}。代表方：{fang}。"
                  for k, (name, zz, zf, fang) in enumerate(d["bz"])))
        doc.head(f"四、{n}的中西医结合要点")
        doc.add(d["integ"])
    chapter += 1
    doc.head(f"第{numerals[chapter - 1]}章 中西药合用安全性")
    for k, (q, a) in enumerate(INTEGRATED_QA[3:19]):
        doc.head(f"第{numerals[k]}节 {q}" if k < 10 else f"第十{numerals[k - 10]}节 {q}")
        doc.add(a)
    return doc.text()


# ---------------------------------------------------------------------------------------------
# Multiple choice (C-Eval layout)
# ---------------------------------------------------------------------------------------------

# Syndromes easily confused with one another are never used as each other's distractors.
CONFUSABLE = [
    {"肾阳虚证", "阳虚水泛证", "脾肾阳虚泄泻证", "心肾阳衰寒厥证"},
    {"肝火上炎证", "肝阳上亢证", "肝阳化风证"},
    {"风寒束表证", "太阳中风证", "外感风寒湿兼里热证", "外感风寒内伤湿滞证", "外感凉燥证", "外寒里饮证"},
    {"脾胃气虚证", "脾虚湿盛证", "中气下陷证", "脾胃虚寒证", "中焦虚寒腹痛证", "气血两虚证", "心脾两虚证"},
    {"阴虚血少神志不安证", "肝血不足虚烦证", "肾阴虚证", "肺阴亏耗证", "胆郁痰扰证"},
    {"大肠湿热证", "热毒痢证"},
    {"痰热壅肺证", "痰湿蕴肺证", "风邪犯肺证", "外感温燥证", "外感凉燥证", "风热犯表证"},
    {"湿滞脾胃证", "寒热互结痞证", "食滞胃脘证", "外感风寒内伤湿滞证"},
    {"肝胃不和证", "肝郁脾虚证", "脾虚肝旺痛泻证"},
    {"气分热盛证", "阳明腑实证", "热入营分证"},
    {"心血瘀阻证", "气虚血瘀中风证"},
]

# Pulses and tongue signs whose indications overlap are never each other's distractors in "主病" questions.
PULSE_GROUPS = [{"细脉", "弱脉", "微脉", "濡脉", "缓脉", "代脉", "芤脉"}, {"数脉", "洪脉", "滑脉", "促脉"},
                {"迟脉", "紧脉", "结脉"}, {"弦脉", "紧脉"}, {"涩脉", "结脉", "滑脉", "促脉", "紧脉"},
                {"濡脉", "缓脉", "滑脉", "弦脉"}]
TONGUE_GROUPS = [{"红舌", "绛舌", "黄苔", "裂纹舌", "镜面舌"}, {"淡白舌", "淡红舌", "白苔"},
                 {"胖大舌", "齿痕舌", "腻苔", "腐苔", "裂纹舌"}]


def _main(indication: str) -> str:
    """The main indication, without the "亦可见于…" tail, for use as an option."""
    return re.split(r"；|，亦|，又|，特殊", indication)[0]


def _peers(name: str, groups: list[set]) -> set:
    out = {name}
    for g in groups:
        if name in g:
            out |= g
    return out


# Herbs used as "not in this formula" answers, with the names they may appear under in a formula.
ABSENT_POOL = {
    "石膏": ["石膏"], "大黄": ["大黄"], "麻黄": ["麻黄"], "黄连": ["黄连"], "人参": ["人参"], "当归": ["当归"],
    "柴胡": ["柴胡"], "半夏": ["半夏"], "茯苓": ["茯苓", "茯神"], "白术": ["白术"], "川芎": ["川芎"],
    "桃仁": ["桃仁"], "黄芪": ["黄芪"], "薄荷": ["薄荷"], "天麻": ["天麻"], "丹参": ["丹参"],
    "酸枣仁": ["酸枣仁", "枣仁"], "茵陈": ["茵陈"], "山楂": ["山楂"], "干姜": ["干姜"], "附子": ["附子"],
    "熟地黄": ["地黄", "熟地", "生地"], "白芍": ["芍药", "白芍", "杭芍"], "桔梗": ["桔梗"], "防风": ["防风"],
    "黄芩": ["黄芩", "子芩"], "五味子": ["五味子"], "麦冬": ["麦冬", "麦门冬"], "知母": ["知母"], "葛根": ["葛根"],
    "木香": ["木香"], "香附": ["香附"], "陈皮": ["陈皮", "橘"],
}

LIUYIN_KEY = [("风邪", "善行而数变，为百病之长"), ("寒邪", "其性凝滞、收引"), ("暑邪", "其性升散，且多夹湿"),
              ("湿邪", "其性重浊、黏滞、趋下"), ("燥邪", "其性干涩，易伤肺"), ("火邪", "其性燔灼趋上，易生风动血")]

LIUJING = [("太阳病", "脉浮，头项强痛而恶寒"), ("阳明病", "胃家实"), ("少阳病", "口苦，咽干，目眩"),
           ("太阴病", "腹满而吐，食不下，自利益甚，时腹自痛"), ("少阴病", "脉微细，但欲寐"),
           ("厥阴病", "消渴，气上撞心，心中疼热，饥而不欲食，食则吐蛔")]

XIANGSHENG = {"木": "火", "火": "土", "土": "金", "金": "水", "水": "木"}
XIANGKE = {"木": "土", "土": "水", "水": "火", "火": "金", "金": "木"}


def _q(question: str, correct: str, pool: list[str], rng: random.Random, five: bool) -> tuple | None:
    """A question with `correct` and 3 (or 4) distinct distractors drawn from `pool`."""
    pool = sorted({p for p in pool if p and p != correct})
    need = 4 if five else 3
    if len(pool) < 3:
        return None
    if len(pool) < need:
        need = 3
    return (question, correct, rng.sample(pool, need))


def _group(name: str) -> set:
    out = {name}
    for g in CONFUSABLE:
        if name in g:
            out |= g
    return out


def _top(cat: str) -> str:
    return cat.split("·")[0]


def _mcq_herbs(rng: random.Random) -> list[tuple]:
    qs = []
    herbs = list(HERBS)
    rng.shuffle(herbs)
    dose = {h["name"]: m.group(0) for h in HERBS if (m := re.match(r"[\d.]+～[\d.]+g", h["yl"]))}
    for k, h in enumerate(herbs[:60]):
        n = h["name"]
        others = [o for o in HERBS if _top(o["cat"]) != _top(h["cat"])]
        five = rng.random() < FIVE_SHARE
        kind = k % 6
        if kind == 1 and sum(o["gx"] == h["gx"] for o in HERBS) == 1:
            q = _q(f"下列药物中，具有“{h['gx']}”功效的是", n, [o["name"] for o in others], rng, five)
        elif kind in (0, 1):
            q = _q(f"{n}的功效是", h["gx"], [o["gx"] for o in others], rng, five)
        elif kind == 2:
            q = _q(f"{n}的归经是", h["gj"], [o["gj"] for o in HERBS], rng, five)
        elif kind == 3:
            q = _q(f"{n}的性味是", h["xw"], [o["xw"] for o in HERBS], rng, five)
        elif kind == 4 and n in dose:
            q = _q(f"按《中国药典》，{n}的常用内服剂量是", dose[n], list(dose.values()), rng, five)
        else:
            q = _q(f"{n}在《中药学》中属于", h["cat"], [o["cat"] for o in HERBS], rng, five)
        if q:
            qs.append(q)
    special = [n for names in SPECIAL_DECOCTION.values() for n in names]
    words = ("先煎", "后下", "包煎", "另煎", "烊化", "溶入", "入丸散", "久煎", "冲服", "焗服", "吞服")
    plain = [h["name"] for h in HERBS
             if not any(w in h["yl"] + h["note"] + h["zy"] for w in words)
             and not any(x.startswith(h["name"]) for x in special)]
    for how, names in (("先煎", ["石膏", "牡蛎", "龟甲"]), ("后下", ["薄荷", "砂仁", "钩藤"]), ("包煎", ["车前子", "蒲黄", "旋覆花"])):
        qs.append(_q(f"下列药物中，入汤剂宜{how}的是", rng.choice(names), plain, rng, rng.random() < FIVE_SHARE))
    safe = ["茯苓", "白术", "当归", "黄芪", "陈皮", "山药", "大枣", "枸杞子", "麦冬", "川芎"]
    qs.append(_q("按“十八反”，不宜与甘草同用的是", "海藻", safe, rng, False))
    qs.append(_q("按“十八反”，不宜与附子同用的是", "半夏", ["茯苓", "白术", "干姜", "肉桂", "人参"], rng, False))
    qs.append(_q("按“十八反”，不宜与人参同用的是", "藜芦", ["黄芪", "白术", "茯苓", "麦冬"], rng, False))
    qs.append(_q("按“十九畏”，丁香不宜与下列哪味药同用？", "郁金", ["陈皮", "木香", "砂仁", "干姜"], rng, True))
    qs.append(_q("按“十九畏”，肉桂（官桂）不宜与下列哪味药同用？", "赤石脂", ["附子", "干姜", "吴茱萸"], rng, False))
    qs.append(_q("下列药物中，主含硫化汞的是", "朱砂", ["雄黄", "石膏", "芒硝", "滑石"], rng, True))
    assert len(SHIBAFAN) == 3 and len(SHIJIUWEI) == 9
    return [q for q in qs if q]


def _mcq_formulas(rng: random.Random) -> list[tuple]:
    qs = []
    formulas = list(FORMULAS)
    rng.shuffle(formulas)
    for k, f in enumerate(formulas[:50]):
        n = f["name"]
        others = [o for o in FORMULAS if _top(o["cat"]) != _top(f["cat"])]
        five = rng.random() < FIVE_SHARE
        kind = k % 5
        if kind == 0:
            q = _q(f"{n}的出处是", f["src"], [o["src"] for o in FORMULAS], rng, five)
        elif kind == 1:
            q = _q(f"{n}的功用是", f["gy"], [o["gy"] for o in others], rng, five)
        elif kind == 2:
            q = _q(f"具有“{f['gy']}”功用的方剂是", n, [o["name"] for o in others], rng, five)
        elif kind == 3:
            absent = [a for a, names in ABSENT_POOL.items()
                      if not any(t in z or z in t for t in names for z in f["zc"])]
            present = [z for z in f["zc"] if "（" not in z]
            need = 4 if five and len(present) >= 4 else 3
            q = None
            if len(present) >= need and absent:
                q = (f"下列药物中，不属于{n}组成的是", rng.choice(absent), rng.sample(present, need))
        else:
            head = f["zz"].split("。")[0].split("，")[0]
            clash = [o for o in FORMULAS if o is not f and o["zz"].startswith(head)]
            q = None if clash else _q(f"主治“{head}”的代表方剂是", n, [o["name"] for o in others], rng, five)
        if q:
            qs.append(q)
    return qs


def _mcq_basic(rng: random.Random) -> list[tuple]:
    qs = []
    label = {"zhi": "在志为", "guan": "开窍于", "ti": "在体合", "ye": "在液为", "hua": "其华在", "se": "在色为",
             "wei": "在味为"}
    for w in WUXING:
        for key, word in label.items():
            pool = [x[key] for x in WUXING]
            qs.append(_q(f"按五行归类，{w['zang']}{word}", w[key], pool, rng, rng.random() < FIVE_SHARE + 0.1))
        qs.append(_q(f"五脏之中，五行属“{w['xing']}”的是", w["zang"], [x["zang"] for x in WUXING], rng,
                     rng.random() < FIVE_SHARE + 0.1))
    elements = list(XIANGSHENG)
    for a in elements:
        qs.append(_q(f"按五行相生规律，{a}生", XIANGSHENG[a], [e for e in elements if e != a], rng, False))
        qs.append(_q(f"按五行相克规律，{a}克", XIANGKE[a], [e for e in elements if e != a], rng, False))
    for z, d in ZANG.items():
        qs.append(_q(f"中医认为“{d['gn']}”是哪一脏的主要功能？", z, list(ZANG), rng, rng.random() < FIVE_SHARE + 0.1))
    qs.append(_q("五脏之中被称为“娇脏”的是", "肺", ["心", "肝", "脾", "肾"], rng, True))
    qs.append(_q("被称为“后天之本”的脏是", "脾", ["心", "肝", "肺", "肾"], rng, False))
    qs.append(_q("被称为“先天之本”的脏是", "肾", ["心", "肝", "肺", "脾"], rng, False))
    for name, trait in LIUYIN_KEY:
        qs.append(_q(f"“{trait}”是哪种邪气的性质和致病特点？", name, [x for x, _ in LIUYIN_KEY], rng,
                     rng.random() < FIVE_SHARE))
    for a, b in QIQING:
        qs.append(_q(f"《素问·举痛论》云“{a}则”", b, [y for _, y in QIQING], rng, False))
    qs.append(_q("“气为血之帅”不包括下列哪项含义？", "血能载气", ["气能生血", "气能行血", "气能摄血"], rng, False))
    qs.append(_q("积于胸中，走息道以行呼吸、贯心脉以行气血的气是", "宗气", ["元气", "营气", "卫气"], rng, False))
    qs.append(_q("提出“三因学说”的医家是", "陈无择", ["张仲景", "叶天士", "李东垣", "朱丹溪"], rng, True))
    return [q for q in qs if q]


def _mcq_diag(rng: random.Random) -> list[tuple]:
    qs = []
    for name, feat, _zhu in PULSES:
        qs.append(_q(f"脉象“{feat}”属于", name, [p for p, _, _ in PULSES], rng, rng.random() < FIVE_SHARE))
    for name, _feat, zhu in PULSES[:12]:
        pool = [_main(z) for p, _, z in PULSES if p not in _peers(name, PULSE_GROUPS)]
        qs.append(_q(f"{name}的主病是", _main(zhu), pool, rng, rng.random() < FIVE_SHARE))
    for name, _feat, zhu in TONGUES:
        pool = [_main(z) for t, _, z in TONGUES if t not in _peers(name, TONGUE_GROUPS)]
        qs.append(_q(f"舌诊中，{name}多主", _main(zhu), pool, rng, rng.random() < FIVE_SHARE))
    syns = list(SYNDROMES)
    rng.shuffle(syns)
    for k, s in enumerate(syns[:30]):
        others = [o for o in SYNDROMES if o["name"] not in _group(s["name"])]
        five = rng.random() < FIVE_SHARE
        if k % 3 == 0:
            q = _q(f"患者{s['zz']}，{s['she']}，{s['mai']}。其证型是", s["name"], [o["name"] for o in others], rng, five)
        elif k % 3 == 1:
            q = _q(f"{s['name']}的治法是", s["zf"], [o["zf"] for o in others], rng, five)
        else:
            q = _q(f"{s['name']}的代表方是", s["fang"], [o["fang"] for o in others], rng, five)
        if q:
            qs.append(q)
    for name, tigang in LIUJING:
        qs.append(_q(f"《伤寒论》“{tigang}”是哪一经病的提纲？", name, [x for x, _ in LIUJING], rng, False))
    qs.append(_q("温病“身热夜甚，心烦不寐，斑疹隐隐，舌质红绛，脉细数”属于", "营分证", ["卫分证", "气分证", "血分证"], rng,
                 False))
    qs.append(_q("八纲辨证中的总纲是", "阴阳", ["表里", "寒热", "虚实"], rng, False))
    return [q for q in qs if q]


def _mcq_hand(items: list[tuple]) -> list[tuple]:
    return [(q, c, list(d)) for q, c, d in items]


def build_mcq() -> tuple[list[list[str]], list[list[str]]]:
    rng = random.Random(SEED)
    by_subject = {
        "中药学": _mcq_herbs(rng),
        "方剂学": _mcq_formulas(rng),
        "中医基础理论": _mcq_basic(rng),
        "中医诊断学": _mcq_diag(rng),
        "针灸学": _mcq_hand(ACU_MCQ),
        "中西医结合": _mcq_hand(INTEG_MCQ),
    }
    # Balanced answer letters: each option count has its own deck of positions, reshuffled when used up.
    decks: dict[int, list[int]] = {}

    def position(k: int) -> int:
        if not decks.get(k):
            deck = list(range(k))
            rng.shuffle(deck)
            decks[k] = deck
        return decks[k].pop()

    test, dev = [], []
    for subject in SUBJECTS:
        items = by_subject[subject]
        order = list(range(len(items)))
        rng.shuffle(order)
        for rank, idx in enumerate(order):
            question, correct, distractors = items[idx]
            options = list(distractors)
            rng.shuffle(options)
            k = len(options) + 1
            pos = position(k)
            options.insert(pos, correct)
            row = [question, *options, *([""] * (5 - k)), LETTERS[pos], subject]
            (dev if rank < MINIMUMS["dev_per_subject"] else test).append(row)
    test = [[str(i), *row] for i, row in enumerate(test)]
    dev = [[str(i), *row] for i, row in enumerate(dev)]
    return test, dev


# ---------------------------------------------------------------------------------------------
# Writing and checking
# ---------------------------------------------------------------------------------------------

def _csv_text(rows: list[list[str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(MCQ_HEADER)
    writer.writerows(rows)
    return buf.getvalue()


def write_all() -> dict[Path, int]:
    qa = build_qa()
    test, dev = build_mcq()
    outputs = {
        OUT_QA: json.dumps(qa, ensure_ascii=False, indent=1) + "\n",
        OUT_CORPUS: build_corpus(),
        OUT_MCQ: _csv_text(test),
        OUT_MCQ_DEV: _csv_text(dev),
        OUT_TEXTBOOK: build_textbook(),
    }
    sizes = {}
    for path, text in outputs.items():
        data = text.encode("utf-8")
        path.write_bytes(data)
        sizes[path] = len(data)
    return sizes


def check() -> list[str]:
    problems: list[str] = []

    def need(cond: bool, message: str) -> None:
        if not cond:
            problems.append(message)

    # Fact tables
    need(len(HERBS) >= MINIMUMS["herbs"], f"only {len(HERBS)} herbs")
    need(len(FORMULAS) >= MINIMUMS["formulas"], f"only {len(FORMULAS)} formulas")
    need(len({h["name"] for h in HERBS}) == len(HERBS), "duplicate herb names")
    need(len({f["name"] for f in FORMULAS}) == len(FORMULAS), "duplicate formula names")
    need(len(INTEGRATED_QA) >= MINIMUMS["integrated_qa"], "too few integrated QAs")

    # QA
    raw = OUT_QA.read_bytes()
    need(not raw.startswith(b"\xef\xbb\xbf"), "tcm_qa.json has a BOM")
    qa = json.loads(raw.decode("utf-8"))
    need(isinstance(qa, list) and len(qa) >= MINIMUMS["qa"], f"tcm_qa.json: {len(qa)} records")
    prompts = set()
    bare = set()
    for i, r in enumerate(qa):
        need(set(r) == {"instruction", "input", "output"}, f"qa[{i}] keys {sorted(r)}")
        need(all(isinstance(r.get(k), str) for k in ("instruction", "input", "output")), f"qa[{i}] non-string")
        need(bool(r["instruction"].strip()) and bool(r["output"].strip()), f"qa[{i}] empty field")
        need(MIN_CHARS <= len(r["output"]) <= MAX_CHARS, f"qa[{i}] output length {len(r['output'])}")
        key = (r["instruction"], r["input"])
        need(key not in prompts, f"qa[{i}] duplicate instruction+input: {r['instruction']}")
        prompts.add(key)
        if not r["input"]:
            need(r["instruction"] not in bare, f"qa[{i}] duplicate instruction: {r['instruction']}")
            bare.add(r["instruction"])

    # MCQ
    questions: set[str] = set()
    for path, per_subject in ((OUT_MCQ, MINIMUMS["mcq_per_subject"]), (OUT_MCQ_DEV, MINIMUMS["dev_per_subject"])):
        raw = path.read_bytes()
        need(not raw.startswith(b"\xef\xbb\xbf"), f"{path.name} has a BOM")
        rows = list(csv.reader(io.StringIO(raw.decode("utf-8"))))
        need(rows[0] == MCQ_HEADER, f"{path.name}: header {rows[0]}")
        body = rows[1:]
        counts = {s: 0 for s in SUBJECTS}
        letters: dict[str, int] = {}
        for row in body:
            need(len(row) == len(MCQ_HEADER), f"{path.name}: row width {len(row)}")
            rec = dict(zip(MCQ_HEADER, row))
            options = [rec[c] for c in LETTERS if rec[c]]
            need(all(rec[c] for c in "ABCD"), f"{path.name} {rec['id']}: empty option among A-D")
            need(len(set(options)) == len(options), f"{path.name} {rec['id']}: repeated option")
            need(rec["answer"] in LETTERS and bool(rec[rec["answer"]]), f"{path.name} {rec['id']}: bad answer")
            need(bool(rec["question"].strip()), f"{path.name} {rec['id']}: empty question")
            need(rec["question"] not in questions, f"{path.name} {rec['id']}: repeated question {rec['question']}")
            questions.add(rec["question"])
            need(rec["subject"] in counts, f"{path.name} {rec['id']}: subject {rec['subject']}")
            counts[rec["subject"]] = counts.get(rec["subject"], 0) + 1
            letters[rec["answer"]] = letters.get(rec["answer"], 0) + 1
        if path == OUT_MCQ:
            need(len(body) >= MINIMUMS["mcq"], f"{path.name}: {len(body)} questions")
            for s, c in counts.items():
                need(c >= per_subject, f"{path.name}: {s} has {c}")
            four = [letters.get(c, 0) for c in "ABCD"]
            need(max(four) - min(four) <= max(4, len(body) // 25), f"{path.name}: unbalanced answers {letters}")
            five = sum(1 for row in body if row[6])
            need(0.12 <= five / len(body) <= 0.3, f"{path.name}: {five} five-option questions of {len(body)}")
        else:
            for s, c in counts.items():
                need(c == per_subject, f"{path.name}: {s} has {c}")

    # Text corpora
    for path, minimum in ((OUT_CORPUS, MINIMUMS["corpus_bytes"]), (OUT_TEXTBOOK, MINIMUMS["textbook_bytes"])):
        raw = path.read_bytes()
        need(not raw.startswith(b"\xef\xbb\xbf"), f"{path.name} has a BOM")
        need(len(raw) >= minimum, f"{path.name}: {len(raw)} bytes < {minimum}")
        paras = [p for p in raw.decode("utf-8").split("\n\n")]
        need(all(p.strip() for p in paras), f"{path.name}: empty paragraph")
        need("\n\n\n" not in raw.decode("utf-8"), f"{path.name}: stray blank lines")
    for h in HERBS:
        need(f"【{h['name']}】" in OUT_CORPUS.read_text(encoding="utf-8"), f"corpus lacks herb {h['name']}")
    return problems


def main(argv: list[str]) -> int:
    sizes = write_all()
    for path, size in sizes.items():
        print(f"{path.name}: {size} bytes")
    if "--check" in argv:
        problems = check()
        for p in problems[:50]:
            print("PROBLEM:", p)
        if problems:
            print(f"{len(problems)} problem(s)")
            return 1
        print("check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
