"""The five-step Gradio page of the encrypted credit-card approval service, in Chinese and English.

``python app.py`` starts the FHE server (``uvicorn server:app``) as a child process unless
FHE_SERVER_URL names another server, waits for its /health, then serves the page (port from
GRADIO_SERVER_PORT, Gradio's default otherwise). Environment variables read here:

- FHE_SERVER_URL: use this FHE server instead of starting one;
- FHE_SERVER_PORT: port of the child FHE server (default 8000);
- FHE_SERVER_START_TIMEOUT: seconds to wait for the server's /health (default 60);
- FHE_CLIENT_KEYS_DIR (through settings.CLIENT_KEYS_DIR): where each session's keys live;
- GRADIO_SERVER_PORT / GRADIO_SERVER_NAME: read by Gradio itself.

Every browser session gets its own ``CreditScoringClient`` (in a ``gr.State``) with its own
secret key in ``CLIENT_KEYS_DIR/<random>``; the keys and the server session are removed when the
tab is closed (``demo.unload``), when the state expires or is deleted, and at exit.

The page's language follows the browser's: static text through ``gr.I18n``, and messages built
by the handlers (verdict, explanation, errors) from the request's Accept-Language header.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import logging
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import gradio as gr
import httpx

import backend
import settings
import threeparty_page

logger = logging.getLogger(__name__)

LANGUAGES = ("en", "zh")
# Seconds a session's client (and its keys) lives after its last update by a step.
CLIENT_STATE_TTL_SECONDS = 3600
HEALTH_POLL_INTERVAL_SECONDS = 0.25
DEFAULT_FHE_SERVER_PORT = 8000
DEFAULT_START_TIMEOUT_SECONDS = 60.0
INCOME_STEP = 500
ASSET_FIELDS = ("own_car", "own_property", "mobile_phone")
YES, NO = "yes", "no"
# The browser tab's title (Gradio does not translate it): both languages.
PAGE_TITLE = "信用卡审批预测 · Credit-card approval with FHE"


def _slug(value: str) -> str:
    """Make a translation-key-safe slug of a canonical category value ("18+" -> "18")."""
    return re.sub(r"[^a-z0-9]+", "_", value.lower()).strip("_")


def category_key(field: str, value: str) -> str:
    """Translation key of a category value's display name."""
    return f"cat_{field}_{_slug(value)}"


# ---------------------------------------------------------------------------------------------
# Translations: one dict, every key in both languages (tests check it)
# ---------------------------------------------------------------------------------------------
_ZH = {
    "title": "<h1 align='center'>使用全同态加密的信用卡审批预测</h1>",
    "acc_scoring_title": "什么是信用卡的审批评估分?",
    "acc_scoring_body": (
        "这是一个复杂的过程,涉及多个实体:申请人、银行、信用中心和信用评分机构。\n\n"
        "当您申请信用卡时,您会向银行提供个人和财务信息。这可能包括您的收入、就业状况和现有债务。"
        "银行使用这些信息来评估您的信用度。为此,他们经常求助于信用中心和信用评分机构。\n\n"
        "- 信用中心收集并保存有关消费者信用历史的数据。"
        "这些数据包括您过去和当前的债务以及您的信用历史长度。\n"
        "- 信用评分机构使用算法来分析来自信用中心的数据并生成信用评分。"
        "该分数是您信用度的数字表示。\n"
        "- 银行使用您的信用评分以及您提供的信息来对您的信用卡申请做出决定。"
        "更高的信用评分通常会增加您获得批准的机会,并可能带来更好的条款(例如更低的利率)。"
    ),
    "acc_privacy_title": "为什么在此过程中添加新的隐私计算处理层至关重要?",
    "acc_privacy_body": (
        "因为所涉及的数据高度敏感。它包括个人信息,如您的身份证号码、收入和信用记录。\n\n"
        "不同实体之间有大量数据共享。您的信息不仅掌握在银行手中,还掌握在信用中心和评分机构手中。"
        "有权访问您数据的实体越多,数据泄露的风险就越大。这可能导致身份盗窃和金融欺诈。"
        "还有数据准确性的问题。\n\n"
        "信用报告中的错误可能导致不公平的低信用评分,影响您获得信贷的能力。"
    ),
    "acc_fhe_title": "为什么全同态加密(FHE)是提升信用评分能力的解决方案?",
    "acc_fhe_body": (
        "全同态加密 (FHE) 被视为增强涉及申请人、银行、信用中心和信用评分机构等多方的"
        "信用评分流程的隐私的理想解决方案。\n\n"
        "它允许对加密的数据进行计算,而无需解密。这意味着处理数据的服务器可以分析敏感数据,"
        "却看不到其中的实际信息。\n\n"
        "在信用评分的背景下,可以组合和分析来自各种来源的数据以做出更明智的决策,"
        "而进行计算的服务器看不到任何一方的明文数据。"
        "因此,服务器一侧的数据泄露风险被大大降低。\n\n"
        "**本演示中的实际情况:** 三方的输入都在这一个页面中填写。"
        "本页面的进程(客户端)生成唯一的一把私钥,用它分别加密每一方的输入,"
        "并把三个密文分别发送到服务器。因此本页面的进程能看到所有明文输入,而服务器只看到密文。\n\n"
        "总而言之,FHE 提供了一种在不向计算方暴露数据的前提下做出信贷资格决策的方法,"
        "为数据实用性和机密性之间的微妙平衡提供了一个解决方案。"
    ),
    "diagram_caption": (
        "<p align='center' style='color:grey'>申请人、银行和信用中心的输入在客户端分别加密;"
        "服务器只在密文上计算;加密的结果返回客户端,由客户端用私钥解密。</p>"
    ),
    "step1_title": "## 步骤1:创建密钥。",
    "step1_who": "<span style='color:grey'>客户端(本页面的进程,代表申请人、银行和信用中心)</span>",
    "step1_body": (
        "- 私钥在客户端生成:本页面的进程为每个浏览器会话单独生成一把私钥,"
        "保存在 `CLIENT_KEYS_DIR` 下该会话专属的文件夹中,会话结束或过期后删除。"
        "它用于加密输入和解密结果,从不发送给服务器或任何其他方。\n"
        "- 计算密钥(evaluation key)由私钥派生,是服务器在密文上进行计算所需的密钥,"
        "不能用来解密数据。因此只有计算密钥被传输到服务器。"
    ),
    "btn_keygen": "生成密钥并将计算密钥发送到服务器。",
    "label_evaluation_key": "计算密钥:",
    "step2_title": "## 步骤2:填写申请信息。",
    "step2_who": "<span style='color:grey'>客户端(申请人、银行和信用中心的输入)</span>",
    "step2_body": (
        "选择与您要评估的个人资料相对应的信息。此模型使用了三种信息来源:\n\n"
        "- 申请人的个人信息,以评估其信用卡资格;\n"
        "- 申请人的银行账户历史记录,其中提供了与该决定相关的任何类型的申请人银行信息"
        "(此处,我们考虑开户时间);\n"
        "- 以及信用中心信息,这些信息代表了任何其他信息(这里指就业历史),"
        "这些信息可以提供与决策相关的额外见解。\n\n"
        "每一方的输入都单独预处理、单独加密,并作为单独的密文发送到服务器。"
        "在本演示中,三方的输入都由本页面使用同一把客户端私钥加密。\n\n"
        "在运行FHE推理之前,请务必在更新后加密并发送值(通过每一方下方的按钮)。"
        "修改已发送的输入后,该方会显示为“未发送”,需要重新加密并发送。"
    ),
    "step21_title": "### 步骤2.1 - 申请人信息 🧑‍💼",
    "label_assets": "您目前持有或拥有以下哪些资产?",
    "asset_own_car": "汽车",
    "asset_own_property": "房产",
    "asset_mobile_phone": "手机",
    "label_children": "孩子数量",
    "info_children": "您有几个小孩子?",
    "label_household": "家庭规模",
    "info_household": "您家里有几口人?",
    "label_income": "收入",
    "info_income": "您的年总收入是多少?",
    "label_age": "年龄",
    "info_age": "今年多大了?",
    "label_income_type": "收入类型",
    "info_income_type": "您的主要收入来源是什么?",
    "label_education": "教育程度",
    "info_education": "您的教育背景是什么?",
    "label_family": "家庭",
    "info_family": "你的家庭状况如何?",
    "label_occupation": "职业",
    "info_occupation": "你的主要职业是什么?",
    "label_housing": "住房",
    "info_housing": "你住在什么类型的房子?",
    "btn_encrypt_send": "加密输入并发送到服务器。",
    "label_encrypted_input": "加密后的输入:",
    "step22_title": "### 步骤2.2 - 银行信息 🏦",
    "label_account_age": "账户年龄(月)",
    "info_account_age": "此人拥有该银行账户多长时间了(以月为单位)?",
    "step23_title": "### 步骤2.3 - 信用中心信息 🏢",
    "label_employed": "是否在职?",
    "choice_yes": "是",
    "choice_no": "否",
    "label_years_employed": "工作年限",
    "info_years_employed": "该员工已工作多长时间(年数)?",
    "step3_title": "## 步骤3:运行FHE计算。",
    "step3_who": "<span style='color:grey'>服务端</span>",
    "step3_body": (
        "一旦服务器收到加密的输入,它就可以计算预测,而无需解密任何值。\n\n"
        "此服务器采用已在合成数据集上训练过的决策树分类器模型"
        "(模型已量化为整数运算,以便在FHE中运行)。"
    ),
    "btn_run_fhe": "运行FHE计算。",
    "label_fhe_time": "FHE总执行时间(秒):",
    "step4_title": "## 步骤4:接收来自服务器的加密输出并解密。",
    "step4_who": "<span style='color:grey'>客户端(本页面)解密</span>",
    "step4_body": (
        "一旦服务器完成推理,加密的结果保存在服务器上,由本页面取回。"
        "服务器没有私钥,无法解密该结果。\n\n"
        "本演示中只有一把私钥:它在步骤1中由本页面的进程在客户端生成并保存,"
        "三方的输入都用它加密。因此只有本页面的进程能解密结果。"
        "本演示没有实现多方共同解密的协议,也没有任何一方持有私钥的“份额”。"
    ),
    "step4_body2": (
        "下面显示的第一个值是实际加密输出的缩短字节表示(十六进制)。\n\n"
        "然后,本页面使用客户端私钥解密该值,得到预测。"
    ),
    "btn_get_output": "接收来自服务器的加密输出并解密。",
    "label_encrypted_output": "加密输出表示:",
    "label_verdict": "预测",
    "step5_title": "## 步骤5:解释预测(仅当您的信用卡可能被拒绝时)。",
    "step5_body": (
        "如果信用卡申请可能被拒绝,申请人可以询问最少需要多少年的工作经验,"
        "才最有可能获得信用卡批准。\n\n"
        "为简单起见,这一步合并为一个按钮:本页面为六个工作年限区间各加密一行信用中心输入"
        "(在职=是),一次性发送到服务器;服务器在一次FHE计算中,"
        "把这六行与步骤2中已发送的申请人和银行密文组合评估(这两方的输入不会重新发送),"
        "并返回加密的结果;本页面再用私钥解密,给出从您所选区间起最少的、"
        "最有可能获批的工作年限区间。如果申请已经很可能获批,则不需要任何FHE计算。\n\n"
        "如果想确认结果,只需在步骤2.3中更新工作年限,重新加密并发送,然后再次运行步骤3和步骤4。"
    ),
    "btn_explain": "加密输入,在FHE中计算并解密输出。",
    "label_explain": "最有可能获批所需的工作年限",
    "footer": "本应用是一个隐私保护机器学习的示例,仅供参考。",
    "logo_alt": "加密信用卡审批的标志",
    "diagram_alt": "申请人、银行和信用中心在客户端加密,FHE服务器只在密文上计算,客户端解密结果",
    # Messages built by the handlers.
    "not_sent": "未发送:输入在发送后已更改,请重新加密并发送。",
    "verdict_approved": "很可能获批",
    "verdict_refused": "很可能被拒绝",
    "explain_already": "申请已经很可能获批:无需解释,也没有运行FHE计算。",
    "explain_years": "在职(是)且工作年限为“{years}”时最有可能获批,"
    "这是从您所选区间起最少的年限。(FHE执行时间:{seconds} 秒)",
    "explain_none": "仅靠工作年限(在职=是)无法改变结果:从您所选区间起,"
    "每个工作年限区间都很可能被拒绝。(FHE执行时间:{seconds} 秒)",
    "party_applicant": "申请人",
    "party_bank": "银行",
    "party_credit_bureau": "信用中心",
    "list_separator": "、",
    "error_title": "错误",
    "err_order_keys_first": "请先生成密钥(步骤1)。",
    "err_order_inputs_first": "请先加密并发送所有三方的输入(步骤2)。缺少:{parties}。",
    "err_order_run_first": "请先运行FHE计算(步骤3)。",
    "err_order_decrypt_first": "请先接收并解密结果(步骤4)。",
    "err_inputs_changed": "以下各方的输入在发送后已更改,请重新加密并发送(步骤2):{parties}。",
    "err_order_server": "服务器拒绝了顺序不对的步骤,请按步骤顺序操作。({detail})",
    "err_unauthorized": "服务器拒绝了会话令牌。请重新生成密钥(步骤1)。",
    "err_not_found": "服务器上已没有这个会话(可能已过期)。请重新生成密钥(步骤1)。",
    "err_too_large": "发送的数据超过了服务器允许的大小。",
    "err_invalid_payload": "服务器无法读取发送的数据。({detail})",
    "err_busy": "服务器正忙,请稍后重试。",
    "err_busy_retry": "服务器正忙,请在 {seconds} 秒后重试。",
    "err_unreachable": "无法连接到FHE服务器,请确认服务器正在运行。",
    "err_timeout": "FHE服务器没有及时响应,请稍后重试。",
    "err_server_error": "服务器返回了错误。({detail})",
    "err_bad_response": "服务器返回的结果无法解密或读取。",
    "err_invalid_field": "输入值无效。({detail})",
    "err_client_error": "客户端出错。({detail})",
    "err_unexpected": "发生了意外错误,请重试。",
}

_EN = {
    "title": (
        "<h1 align='center'>Credit-card approval prediction with fully homomorphic encryption</h1>"
    ),
    "acc_scoring_title": "What is the approval score of a credit-card application?",
    "acc_scoring_body": (
        "It is a complex process involving several entities: the applicant, the bank, the credit "
        "bureau and the credit scoring agency.\n\n"
        "When you apply for a credit card, you give the bank personal and financial information. "
        "This may include your income, employment status and existing debts. The bank uses this "
        "information to assess your creditworthiness. To do so, it often turns to credit bureaus "
        "and credit scoring agencies.\n\n"
        "- Credit bureaus collect and keep data about consumers' credit history: your past and "
        "current debts and the length of your credit history.\n"
        "- Credit scoring agencies use algorithms to analyse the credit bureaus' data and produce "
        "a credit score, a numerical representation of your creditworthiness.\n"
        "- The bank uses your credit score together with the information you gave to decide on "
        "your application. A higher score usually improves your chances of approval and may bring "
        "better terms (for example a lower interest rate)."
    ),
    "acc_privacy_title": "Why is adding a new privacy-preserving computation layer essential here?",
    "acc_privacy_body": (
        "Because the data involved is highly sensitive. It includes personal information such as "
        "your ID number, your income and your credit history.\n\n"
        "A lot of data is shared between different entities. Your information is held not only by "
        "the bank but also by the credit bureau and the scoring agency. The more entities have "
        "access to your data, the higher the risk of a data breach, which can lead to identity "
        "theft and financial fraud. There is also the question of data accuracy.\n\n"
        "Errors in a credit report can lead to an unfairly low credit score, affecting your "
        "ability to get credit."
    ),
    "acc_fhe_title": "Why is fully homomorphic encryption (FHE) the answer for credit scoring?",
    "acc_fhe_body": (
        "Fully homomorphic encryption (FHE) is seen as an ideal way to strengthen the privacy of a "
        "credit scoring process that involves several parties such as the applicant, the bank, "
        "the credit bureau and the scoring agency.\n\n"
        "It allows computing on encrypted data without decrypting it. This means that the server "
        "processing sensitive data can analyse it without seeing the actual information.\n\n"
        "For credit scoring, data from several sources can be combined and analysed to make a "
        "better-informed decision, while the server doing the computation sees no party's data in "
        "clear. The risk of a data breach on the server's side is therefore greatly reduced.\n\n"
        "**What really happens in this demo:** the three parties' inputs are all entered on this "
        "one page. The page's process (the client) generates a single secret key, encrypts each "
        "party's inputs separately with it and sends the three ciphertexts separately to the "
        "server. The page's process therefore sees every input in clear; the server only sees "
        "ciphertexts.\n\n"
        "In short, FHE offers a way to make credit decisions without exposing the data to the "
        "party that computes them, striking a balance between the usefulness and the "
        "confidentiality of the data."
    ),
    "diagram_caption": (
        "<p align='center' style='color:grey'>The applicant's, the bank's and the credit "
        "bureau's inputs are encrypted separately on the client side; the server computes on "
        "ciphertexts only; the encrypted result goes back to the client, which decrypts it with "
        "the secret key.</p>"
    ),
    "step1_title": "## Step 1: Generate the keys.",
    "step1_who": (
        "<span style='color:grey'>Client side (the page's process, acting for the applicant, "
        "the bank and the credit bureau)</span>"
    ),
    "step1_body": (
        "- The secret key is generated on the client side: the page's process generates one "
        "secret key per browser session and stores it in a folder of its own under "
        "`CLIENT_KEYS_DIR`, deleted when the session ends or expires. It encrypts the inputs and "
        "decrypts the result, and is never sent to the server or anyone else.\n"
        "- The evaluation key is derived from the secret key; the server needs it to compute on "
        "ciphertexts, and it cannot be used to decrypt data. So only the evaluation key is sent "
        "to the server."
    ),
    "btn_keygen": "Generate the keys and send the evaluation key to the server.",
    "label_evaluation_key": "Evaluation key:",
    "step2_title": "## Step 2: Fill in the application.",
    "step2_who": (
        "<span style='color:grey'>Client side (the applicant's, the bank's and the credit "
        "bureau's inputs)</span>"
    ),
    "step2_body": (
        "Choose the information matching the profile you want to assess. The model uses three "
        "sources of information:\n\n"
        "- the applicant's personal information, to assess their eligibility for a credit card;\n"
        "- the applicant's bank account history, standing for any banking information relevant "
        "to the decision (here, the age of the account);\n"
        "- the credit bureau's information, standing for any other information (here, the "
        "employment history) that can add insight to the decision.\n\n"
        "Each party's inputs are preprocessed and encrypted separately and sent to the server as "
        "a separate ciphertext. In this demo, all three parties' inputs are encrypted by this "
        "page with the same client-side secret key.\n\n"
        "Before running the FHE computation, make sure to encrypt and send the values after any "
        "change (with the button below each party). Once you edit an input that was sent, that "
        "party shows as “not sent” until you encrypt and send it again."
    ),
    "step21_title": "### Step 2.1 - Applicant's information 🧑‍💼",
    "label_assets": "Which of these assets do you currently own?",
    "asset_own_car": "Car",
    "asset_own_property": "Property",
    "asset_mobile_phone": "Mobile phone",
    "label_children": "Number of children",
    "info_children": "How many children do you have?",
    "label_household": "Household size",
    "info_household": "How many people live in your household?",
    "label_income": "Income",
    "info_income": "What is your total yearly income?",
    "label_age": "Age",
    "info_age": "How old are you?",
    "label_income_type": "Income type",
    "info_income_type": "What is your main source of income?",
    "label_education": "Education",
    "info_education": "What is your education level?",
    "label_family": "Family status",
    "info_family": "What is your family status?",
    "label_occupation": "Occupation",
    "info_occupation": "What is your main occupation?",
    "label_housing": "Housing",
    "info_housing": "What type of housing do you live in?",
    "btn_encrypt_send": "Encrypt the inputs and send them to the server.",
    "label_encrypted_input": "Encrypted input:",
    "step22_title": "### Step 2.2 - Bank's information 🏦",
    "label_account_age": "Account age (months)",
    "info_account_age": "For how long (in months) has this person held this bank account?",
    "step23_title": "### Step 2.3 - Credit bureau's information 🏢",
    "label_employed": "Employed?",
    "choice_yes": "Yes",
    "choice_no": "No",
    "label_years_employed": "Years employed",
    "info_years_employed": "For how long (in years) has this person been employed?",
    "step3_title": "## Step 3: Run the FHE computation.",
    "step3_who": "<span style='color:grey'>Server side</span>",
    "step3_body": (
        "Once the server has received the encrypted inputs, it computes the prediction without "
        "decrypting any value.\n\n"
        "The server uses a decision-tree classifier trained on a synthetic data set (quantized to "
        "integer arithmetic so that it runs in FHE)."
    ),
    "btn_run_fhe": "Run the FHE computation.",
    "label_fhe_time": "Total FHE execution time (seconds):",
    "step4_title": "## Step 4: Receive the encrypted output from the server and decrypt it.",
    "step4_who": "<span style='color:grey'>Client side (this page) decrypts</span>",
    "step4_body": (
        "Once the server has finished, the encrypted result is kept on the server and fetched by "
        "this page. The server has no secret key and cannot decrypt it.\n\n"
        "There is a single secret key in this demo: it was generated in Step 1 by the page's "
        "process on the client side and stored there, and all three parties' inputs were "
        "encrypted with it. So only the page's process can decrypt the result. This demo does "
        "not implement any protocol in which several parties combine shares to decrypt, and no "
        "party holds a “share” of the key."
    ),
    "step4_body2": (
        "The first value shown below is a shortened hexadecimal view of the actual encrypted "
        "output.\n\n"
        "The page then decrypts it with the client-side secret key to get the prediction."
    ),
    "btn_get_output": "Receive the encrypted output from the server and decrypt it.",
    "label_encrypted_output": "Encrypted output:",
    "label_verdict": "Prediction",
    "step5_title": "## Step 5: Explain the prediction (only if the card is likely refused).",
    "step5_body": (
        "If the application is likely refused, the applicant can ask for the fewest years of "
        "employment that would most likely lead to approval.\n\n"
        "For simplicity this step is a single button: the page encrypts one credit-bureau row "
        "(employed = yes) for each of the six years-employed bins and sends them to the server "
        "at once; in one FHE computation the server scores these six rows together with the "
        "applicant's and bank's ciphertexts already sent in Step 2 (those two parties' inputs "
        "are not sent again) and returns the encrypted results; the page decrypts them and "
        "answers with the fewest bin, from the one you chose, that would most likely lead to "
        "approval. If the application is already likely approved, no FHE computation is "
        "needed.\n\n"
        "To check the answer, update the years employed in Step 2.3, encrypt and send it again, "
        "then run Steps 3 and 4 again."
    ),
    "btn_explain": "Encrypt the inputs, compute in FHE and decrypt the output.",
    "label_explain": "Years employed most likely needed for approval",
    "footer": "This application is an example of privacy-preserving machine learning, "
    "for reference only.",
    "logo_alt": "Logo of the encrypted credit-card approval demo",
    "diagram_alt": "Applicant, bank and credit bureau encrypt on the client side, the FHE server "
    "computes on ciphertexts only, the client decrypts the result",
    "not_sent": "Not sent: the inputs changed after they were sent. Encrypt and send them again.",
    "verdict_approved": "Likely approved",
    "verdict_refused": "Likely refused",
    "explain_already": "The application is already likely approved: nothing to explain, and no "
    "FHE computation was run.",
    "explain_years": "With employed = yes, the fewest years employed, from the bin you chose, "
    "that would most likely lead to approval: {years}. (FHE execution time: {seconds} s)",
    "explain_none": "No number of years employed alone (with employed = yes) would change the "
    "outcome: every bin from the one you chose is likely refused. (FHE execution time: "
    "{seconds} s)",
    "party_applicant": "applicant",
    "party_bank": "bank",
    "party_credit_bureau": "credit bureau",
    "list_separator": ", ",
    "error_title": "Error",
    "err_order_keys_first": "Generate the keys first (Step 1).",
    "err_order_inputs_first": "Encrypt and send all three parties' inputs first (Step 2). "
    "Missing: {parties}.",
    "err_order_run_first": "Run the FHE computation first (Step 3).",
    "err_order_decrypt_first": "Receive and decrypt the result first (Step 4).",
    "err_inputs_changed": "These parties' inputs changed after they were sent; encrypt and send "
    "them again (Step 2): {parties}.",
    "err_order_server": "The server refused a step out of order; follow the steps in order. "
    "({detail})",
    "err_unauthorized": "The server refused the session token. Generate new keys (Step 1).",
    "err_not_found": "The server no longer knows this session (it may have expired). Generate "
    "new keys (Step 1).",
    "err_too_large": "The data sent is larger than the server accepts.",
    "err_invalid_payload": "The server could not read the data sent. ({detail})",
    "err_busy": "The server is busy; try again in a moment.",
    "err_busy_retry": "The server is busy; try again in {seconds} s.",
    "err_unreachable": "Cannot reach the FHE server; check that it is running.",
    "err_timeout": "The FHE server did not answer in time; try again later.",
    "err_server_error": "The server answered with an error. ({detail})",
    "err_bad_response": "The server's result could not be read or decrypted.",
    "err_invalid_field": "Invalid input value. ({detail})",
    "err_client_error": "Client error. ({detail})",
    "err_unexpected": "An unexpected error happened; please try again.",
}

for _field, _values in settings.CATEGORY_DISPLAY.items():
    for _value, _names in _values.items():
        _ZH[category_key(_field, _value)] = _names["zh"]
        _EN[category_key(_field, _value)] = _names["en"]

TRANSLATIONS: dict[str, dict[str, str]] = {"en": _EN, "zh": _ZH}
threeparty_page.add_translations(TRANSLATIONS)


def make_i18n() -> gr.I18n:
    """Return the page's gr.I18n (Chinese and English)."""
    return gr.I18n(**TRANSLATIONS)


def request_language(request: gr.Request | None) -> str:
    """Return "zh" or "en" from the browser's preferred language (Accept-Language header).

    The page's static text is translated by the browser from navigator.language, which is the
    first entry of Accept-Language; the handlers use the same entry for their messages.
    """
    header = ""
    headers = getattr(request, "headers", None) if request is not None else None
    if headers is not None:
        with contextlib.suppress(Exception):
            for name, value in dict(headers).items():
                if str(name).lower() == "accept-language":
                    header = str(value)
                    break
    first = header.split(",")[0].split(";")[0].strip().lower()
    return "zh" if first.startswith("zh") else "en"


def tr(lang: str, key: str, **values: Any) -> str:
    """Translate a key into "zh" or "en" (falls back to English), filling ``{placeholders}``."""
    text = TRANSLATIONS.get(lang, _EN).get(key) or _EN[key]
    return text.format(**values) if values else text


def _party_list(lang: str, parties: Sequence[str]) -> str:
    return tr(lang, "list_separator").join(tr(lang, f"party_{p}") for p in parties)


def error_message(error: backend.ClientError, lang: str) -> str:
    """Translate a client-library error into the page's language."""
    code = error.code
    detail = str(error.details.get("detail") or error.message)
    if code == "busy":
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            return tr(lang, "err_busy_retry", seconds=f"{retry_after:g}")
        return tr(lang, "err_busy")
    key = f"err_{code}"
    if key not in _EN:
        key = "err_server_error" if isinstance(error, backend.ServerError) else "err_client_error"
    return tr(
        lang,
        key,
        detail=detail,
        parties=_party_list(lang, error.details.get("parties", ())),
    )


@contextlib.contextmanager
def page_errors(lang: str) -> Iterator[None]:
    """Turn every error of a step into a gr.Error in the page's language (never a traceback)."""
    try:
        yield
    except gr.Error:
        raise
    except backend.ClientError as error:
        logger.info("step refused: %s (%s)", error.code, error.message)
        raise gr.Error(
            error_message(error, lang), title=tr(lang, "error_title"), print_exception=False
        ) from None
    except Exception:
        logger.exception("unexpected error in a page step")
        raise gr.Error(tr(lang, "err_unexpected"), title=tr(lang, "error_title")) from None


def _step_error(lang: str, key: str, **values: Any) -> gr.Error:
    return gr.Error(tr(lang, key, **values), title=tr(lang, "error_title"), print_exception=False)


# ---------------------------------------------------------------------------------------------
# Per-session clients: owned by gr.State; a weak index lets demo.unload and exit close them
# ---------------------------------------------------------------------------------------------
_LIVE_CLIENTS: weakref.WeakValueDictionary[str, backend.CreditScoringClient] = (
    weakref.WeakValueDictionary()
)


def _session_key(request: gr.Request | None, client: backend.CreditScoringClient) -> str:
    session_hash = getattr(request, "session_hash", None) if request is not None else None
    return str(session_hash) if session_hash else f"client-{id(client)}"


def discard_client(client: Any) -> None:
    """gr.State delete callback: close a session's client (server session and keys) in a thread."""
    if isinstance(client, backend.CreditScoringClient):
        threading.Thread(target=client.close, name="close-fhe-client", daemon=True).start()


def end_session(request: gr.Request) -> None:
    """demo.unload: the tab was closed; delete its server session and its keys now."""
    session_hash = getattr(request, "session_hash", None)
    client = _LIVE_CLIENTS.pop(str(session_hash), None) if session_hash else None
    if client is not None:
        client.close()


def close_all_clients() -> None:
    """Close every client still alive in this process (at exit)."""
    for key in list(_LIVE_CLIENTS.keys()):
        client = _LIVE_CLIENTS.pop(key, None)
        if client is not None:
            client.close()


# ---------------------------------------------------------------------------------------------
# Step functions (the page's handlers)
# ---------------------------------------------------------------------------------------------
# Outputs cleared when a run no longer matches the inputs: FHE time, encrypted output, verdict,
# explanation.
_CLEARED_RUN = ("", "", "", "")


def _require_fresh_inputs(lang: str, stale: Sequence[str]) -> None:
    if stale:
        ordered = [p for p in settings.PARTIES if p in stale]
        raise _step_error(lang, "err_inputs_changed", parties=_party_list(lang, ordered))


def _require_client(lang: str, client: Any) -> backend.CreditScoringClient:
    if not isinstance(client, backend.CreditScoringClient) or not client.has_keys:
        raise _step_error(lang, "err_order_keys_first")
    return client


def keygen_step(client: Any, request: gr.Request) -> tuple[Any, ...]:
    """Step 1: new keys for this session, evaluation key uploaded; every later output cleared.

    Returns:
        (client state, stale parties, shortened evaluation key, three ciphertext boxes, FHE
        time, encrypted output, verdict, explanation).
    """
    lang = request_language(request)
    created = not isinstance(client, backend.CreditScoringClient)
    if created:
        client = backend.new_client()
    try:
        with page_errors(lang):
            evaluation_key = backend.keygen_send(client)
    except gr.Error:
        if created:
            client.close()
        raise
    _LIVE_CLIENTS[_session_key(request, client)] = client
    return (client, [], evaluation_key, "", "", "", *_CLEARED_RUN)


def _whole(value: Any) -> Any:
    """A slider's number as an int; anything else unchanged (the client library rejects it)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return int(round(value))
    return value


def _send_outputs(stale: Sequence[str], party: str, ciphertext: str) -> tuple[Any, ...]:
    return ([p for p in stale if p != party], ciphertext, *_CLEARED_RUN)


def send_applicant_step(
    client: Any,
    stale: list[str],
    assets: list[str] | None,
    num_children: float,
    household_size: float,
    total_income: float,
    age: float,
    income_type: str,
    education_type: str,
    family_status: str,
    occupation_type: str,
    housing_type: str,
    request: gr.Request,
) -> tuple[Any, ...]:
    """Step 2.1: preprocess, encrypt and send the applicant's inputs.

    Returns:
        (stale parties, shortened ciphertext, FHE time, encrypted output, verdict, explanation).
    """
    lang = request_language(request)
    client = _require_client(lang, client)
    owned = set(assets or ())
    with page_errors(lang):
        ciphertext = backend.pre_process_encrypt_send_applicant(
            client,
            own_car="own_car" in owned,
            own_property="own_property" in owned,
            mobile_phone="mobile_phone" in owned,
            num_children=_whole(num_children),
            household_size=_whole(household_size),
            total_income=total_income,
            age=_whole(age),
            income_type=income_type,
            education_type=education_type,
            family_status=family_status,
            occupation_type=occupation_type,
            housing_type=housing_type,
        )
    return _send_outputs(stale, "applicant", ciphertext)


def send_bank_step(
    client: Any, stale: list[str], account_age: float, request: gr.Request
) -> tuple[Any, ...]:
    """Step 2.2: preprocess, encrypt and send the bank's input.

    Returns:
        (stale parties, shortened ciphertext, FHE time, encrypted output, verdict, explanation).
    """
    lang = request_language(request)
    client = _require_client(lang, client)
    with page_errors(lang):
        ciphertext = backend.pre_process_encrypt_send_bank(client, account_age=_whole(account_age))
    return _send_outputs(stale, "bank", ciphertext)


def send_credit_bureau_step(
    client: Any, stale: list[str], employed: str, years_employed: str, request: gr.Request
) -> tuple[Any, ...]:
    """Step 2.3: preprocess, encrypt and send the credit bureau's inputs.

    Returns:
        (stale parties, shortened ciphertext, FHE time, encrypted output, verdict, explanation).
    """
    lang = request_language(request)
    client = _require_client(lang, client)
    with page_errors(lang):
        ciphertext = backend.pre_process_encrypt_send_credit_bureau(
            client,
            employed={YES: True, NO: False}.get(employed, employed),
            years_employed=years_employed,
        )
    return _send_outputs(stale, "credit_bureau", ciphertext)


def run_fhe_step(client: Any, stale: list[str], request: gr.Request) -> tuple[str, str, str, str]:
    """Step 3: run the decision tree in FHE on the server.

    Returns:
        (FHE execution time, encrypted output, verdict, explanation) - the last three cleared.
    """
    lang = request_language(request)
    client = _require_client(lang, client)
    _require_fresh_inputs(lang, stale)
    with page_errors(lang):
        seconds = backend.run_fhe(client)
    return f"{seconds:.2f}", "", "", ""


def get_output_step(client: Any, stale: list[str], request: gr.Request) -> tuple[str, str, str]:
    """Step 4: fetch the encrypted verdict and decrypt it.

    Returns:
        (shortened encrypted output, verdict text, explanation) - the explanation cleared.
    """
    lang = request_language(request)
    client = _require_client(lang, client)
    _require_fresh_inputs(lang, stale)
    with page_errors(lang):
        encrypted_output, approved = backend.get_output_and_decrypt(client)
    verdict = tr(lang, "verdict_approved" if approved else "verdict_refused")
    return encrypted_output, verdict, ""


def explain_step(client: Any, stale: list[str], request: gr.Request) -> str:
    """Step 5: encrypt the candidate rows, score them in one FHE run, decrypt the answer.

    Returns:
        The explanation in the page's language.
    """
    lang = request_language(request)
    client = _require_client(lang, client)
    _require_fresh_inputs(lang, stale)
    with page_errors(lang):
        explanation = backend.explain_encrypt_run_decrypt(client)
    if explanation.outcome == "already_approved":
        return tr(lang, "explain_already")
    seconds = (
        "?" if explanation.fhe_execution_time is None else f"{explanation.fhe_execution_time:.2f}"
    )
    if explanation.outcome == "no_change":
        return tr(lang, "explain_none", seconds=seconds)
    years = tr(lang, category_key("years_employed", str(explanation.years_employed)))
    return tr(lang, "explain_years", years=years, seconds=seconds)


def mark_edited(party: str, client: Any, stale: list[str], request: gr.Request) -> tuple[Any, ...]:
    """An input of ``party`` changed: if it had been sent, mark it "not sent" and clear the run.

    Returns:
        (stale parties, ciphertext box, FHE time, encrypted output, verdict, explanation), each
        gr.skip() when nothing changes.
    """
    sent = isinstance(client, backend.CreditScoringClient) and party in client.sent_parties
    if not sent or party in stale:
        return (gr.skip(),) * 6
    lang = request_language(request)
    return ([*stale, party], tr(lang, "not_sent"), *_CLEARED_RUN)


def mark_applicant_edited(client: Any, stale: list[str], request: gr.Request) -> tuple[Any, ...]:
    """An applicant input changed (see mark_edited)."""
    return mark_edited("applicant", client, stale, request)


def mark_bank_edited(client: Any, stale: list[str], request: gr.Request) -> tuple[Any, ...]:
    """The bank input changed (see mark_edited)."""
    return mark_edited("bank", client, stale, request)


def mark_credit_bureau_edited(
    client: Any, stale: list[str], request: gr.Request
) -> tuple[Any, ...]:
    """A credit-bureau input changed (see mark_edited)."""
    return mark_edited("credit_bureau", client, stale, request)


# ---------------------------------------------------------------------------------------------
# Layout
# ---------------------------------------------------------------------------------------------
def _svg_img(file_name: str, alt: str, width: str) -> str:
    """An <img> with the SVG of static/ inlined as a data: URI (no remote address)."""
    data = base64.b64encode((settings.STATIC_DIR / file_name).read_bytes()).decode("ascii")
    return (
        f'<p align="center"><img src="data:image/svg+xml;base64,{data}" alt="{alt}" '
        f'style="width:{width};max-width:100%;height:auto"></p>'
    )


def _category_choices(i18n: gr.I18n, field: str) -> list[tuple[Any, str]]:
    return [(i18n(category_key(field, v)), v) for v in settings.CATEGORY_VALUES[field]]


def build_demo() -> gr.Blocks:
    """Build the five-step page (launch it with ``launch(i18n=make_i18n())``)."""
    i18n = make_i18n()
    ranges = settings.field_ranges()

    def field_slider(field: str, text: str, step: float = 1) -> gr.Slider:
        """A slider over a field's range in the data, at its median (label_/info_<text>)."""
        return gr.Slider(
            minimum=ranges[field]["minimum"],
            maximum=ranges[field]["maximum"],
            value=ranges[field]["value"],
            step=step,
            label=i18n(f"label_{text}"),
            info=i18n(f"info_{text}"),
            elem_id=field.replace("_", "-"),
        )

    def send_controls(party: str) -> tuple[gr.Button, gr.Textbox]:
        """A party's "encrypt and send" button and the box showing its shortened ciphertext."""
        slug = party.replace("_", "-")
        with gr.Row(), gr.Column(scale=2):
            button = gr.Button(i18n("btn_encrypt_send"), elem_id=f"encrypt-{slug}-button")
            box = output_box(label_key="label_encrypted_input", elem_id=f"encrypted-{slug}")
        return button, box

    def step_intro(step: int, *keys: str) -> None:
        """A step's heading, rule and paragraphs (translation keys)."""
        gr.Markdown(i18n(f"step{step}_title"), elem_id=f"step{step}-title")
        gr.Markdown("<hr />")
        for key in keys:
            gr.Markdown(i18n(key))

    def output_box(label_key: str, elem_id: str, max_lines: int = 2) -> gr.Textbox:
        """A read-only textbox showing what a step produced."""
        return gr.Textbox(
            label=i18n(label_key), max_lines=max_lines, interactive=False, elem_id=elem_id
        )

    with gr.Blocks(title=PAGE_TITLE) as demo:
        client_state = gr.State(
            None, time_to_live=CLIENT_STATE_TTL_SECONDS, delete_callback=discard_client
        )
        stale_state = gr.State([])

        gr.HTML(
            _svg_img("logo.svg", alt=f"{_EN['logo_alt']} / {_ZH['logo_alt']}", width="200px"),
            elem_id="logo",
            js_on_load=None,
        )
        gr.Markdown(i18n("title"), elem_id="title")

        with gr.Accordion(i18n("acc_scoring_title"), open=False, elem_id="accordion-scoring"):
            gr.Markdown(i18n("acc_scoring_body"))
        with gr.Accordion(i18n("acc_privacy_title"), open=False, elem_id="accordion-privacy"):
            gr.Markdown(i18n("acc_privacy_body"))
        with gr.Accordion(i18n("acc_fhe_title"), open=False, elem_id="accordion-fhe"):
            gr.Markdown(i18n("acc_fhe_body"))

        gr.HTML(
            _svg_img(
                "parties_server.svg",
                alt=f"{_EN['diagram_alt']} / {_ZH['diagram_alt']}",
                width="820px",
            ),
            elem_id="diagram",
            js_on_load=None,
        )
        gr.Markdown(i18n("diagram_caption"))

        # Step 1
        step_intro(1, "step1_who", "step1_body")
        keygen_button = gr.Button(i18n("btn_keygen"), elem_id="keygen-button", variant="primary")
        evaluation_key = output_box(label_key="label_evaluation_key", elem_id="evaluation-key")

        # Step 2
        step_intro(2, "step2_who", "step2_body")
        with gr.Row():
            with gr.Column():
                gr.Markdown(i18n("step21_title"))
                assets = gr.CheckboxGroup(
                    [(i18n(f"asset_{field}"), field) for field in ASSET_FIELDS],
                    label=i18n("label_assets"),
                    elem_id="assets",
                )
                num_children = field_slider(field="num_children", text="children")
                household_size = field_slider(field="household_size", text="household")
                total_income = field_slider(field="total_income", text="income", step=INCOME_STEP)
                age = field_slider(field="age", text="age")
            with gr.Column():
                dropdowns = {}
                for field, label, info in (
                    ("income_type", "label_income_type", "info_income_type"),
                    ("education_type", "label_education", "info_education"),
                    ("family_status", "label_family", "info_family"),
                    ("occupation_type", "label_occupation", "info_occupation"),
                    ("housing_type", "label_housing", "info_housing"),
                ):
                    dropdowns[field] = gr.Dropdown(
                        choices=_category_choices(i18n, field),
                        value=settings.CATEGORY_VALUES[field][0],
                        label=i18n(label),
                        info=i18n(info),
                        elem_id=field.replace("_", "-"),
                    )
        encrypt_applicant_button, encrypted_applicant = send_controls(party="applicant")
        gr.Markdown("<hr />")
        with gr.Column():
            gr.Markdown(i18n("step22_title"))
            account_age = field_slider(field="account_age", text="account_age")
        encrypt_bank_button, encrypted_bank = send_controls(party="bank")
        gr.Markdown("<hr />")
        with gr.Column():
            gr.Markdown(i18n("step23_title"))
            employed = gr.Radio(
                [(i18n("choice_yes"), YES), (i18n("choice_no"), NO)],
                value=YES,
                label=i18n("label_employed"),
                elem_id="employed",
            )
            years_employed = gr.Dropdown(
                choices=_category_choices(i18n, "years_employed"),
                value=settings.YEARS_EMPLOYED_BINS[0],
                label=i18n("label_years_employed"),
                info=i18n("info_years_employed"),
                elem_id="years-employed",
            )
        encrypt_credit_bureau_button, encrypted_credit_bureau = send_controls(party="credit_bureau")

        # Step 3
        step_intro(3, "step3_who", "step3_body")
        run_fhe_button = gr.Button(i18n("btn_run_fhe"), elem_id="run-fhe-button", variant="primary")
        fhe_execution_time = output_box(
            label_key="label_fhe_time", elem_id="fhe-execution-time", max_lines=1
        )

        # Step 4
        step_intro(4, "step4_who", "step4_body", "step4_body2")
        get_output_button = gr.Button(
            i18n("btn_get_output"), elem_id="get-output-button", variant="primary"
        )
        encrypted_output = output_box(
            label_key="label_encrypted_output", elem_id="encrypted-output"
        )
        verdict = gr.Textbox(
            label=i18n("label_verdict"), max_lines=1, interactive=False, elem_id="verdict"
        )

        # Step 5
        step_intro(5, "step5_body")
        explain_button = gr.Button(i18n("btn_explain"), elem_id="explain-button", variant="primary")
        explain_result = gr.Textbox(
            label=i18n("label_explain"), interactive=False, elem_id="explain-result"
        )
        applicant_fields = [assets, num_children, household_size, total_income, age]
        threeparty_page.build_section(i18n, [*applicant_fields, *dropdowns.values()], [account_age],
                                      [employed, years_employed], request_language, tr)  # fmt: skip
        gr.Markdown(i18n("footer"), elem_id="footer")

        # ---- wiring -------------------------------------------------------------------------
        run_outputs = [fhe_execution_time, encrypted_output, verdict, explain_result]
        applicant_inputs = [
            assets,
            num_children,
            household_size,
            total_income,
            age,
            *(dropdowns[f] for f in settings.APPLICANT_FIELDS[7:]),
        ]
        keygen_button.click(
            keygen_step,
            inputs=[client_state],
            outputs=[
                client_state,
                stale_state,
                evaluation_key,
                encrypted_applicant,
                encrypted_bank,
                encrypted_credit_bureau,
                *run_outputs,
            ],
            api_name="keygen_send",
        )
        encrypt_applicant_button.click(
            send_applicant_step,
            inputs=[client_state, stale_state, *applicant_inputs],
            outputs=[stale_state, encrypted_applicant, *run_outputs],
            api_name="pre_process_encrypt_send_applicant",
        )
        encrypt_bank_button.click(
            send_bank_step,
            inputs=[client_state, stale_state, account_age],
            outputs=[stale_state, encrypted_bank, *run_outputs],
            api_name="pre_process_encrypt_send_bank",
        )
        encrypt_credit_bureau_button.click(
            send_credit_bureau_step,
            inputs=[client_state, stale_state, employed, years_employed],
            outputs=[stale_state, encrypted_credit_bureau, *run_outputs],
            api_name="pre_process_encrypt_send_credit_bureau",
        )
        run_fhe_button.click(
            run_fhe_step,
            inputs=[client_state, stale_state],
            outputs=run_outputs,
            api_name="run_fhe",
        )
        get_output_button.click(
            get_output_step,
            inputs=[client_state, stale_state],
            outputs=[encrypted_output, verdict, explain_result],
            api_name="get_output_and_decrypt",
        )
        explain_button.click(
            explain_step,
            inputs=[client_state, stale_state],
            outputs=[explain_result],
            api_name="explain_encrypt_run_decrypt",
        )

        # Editing an input after sending it: that party is "not sent" until sent again.
        for components, handler, ciphertext_box in (
            (applicant_inputs, mark_applicant_edited, encrypted_applicant),
            ([account_age], mark_bank_edited, encrypted_bank),
            ([employed, years_employed], mark_credit_bureau_edited, encrypted_credit_bureau),
        ):
            for component in components:
                component.change(
                    handler,
                    inputs=[client_state, stale_state],
                    outputs=[stale_state, ciphertext_box, *run_outputs],
                    api_visibility="private",
                    show_progress="hidden",
                    queue=False,
                )

        demo.unload(end_session)
    return demo


# ---------------------------------------------------------------------------------------------
# Running: the FHE server as a child process, then the page
# ---------------------------------------------------------------------------------------------
def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: ask the kernel to SIGTERM the child if this process dies (even by SIGKILL)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a TCP port can be bound on host right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def start_fhe_server(port: int) -> subprocess.Popen[bytes]:
    """Start ``uvicorn server:app`` on 127.0.0.1:port as a child process (in REPO_DIR).

    Raises:
        RuntimeError: if the port is already taken.
    """
    if not port_is_free(port):
        raise RuntimeError(
            f"cannot start the FHE server: port {port} is already in use; set FHE_SERVER_PORT "
            "to a free port, or FHE_SERVER_URL to use a server that is already running"
        )
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "server:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    logger.info("starting the FHE server: %s", " ".join(command))
    preexec = _die_with_parent if sys.platform.startswith("linux") else None
    return subprocess.Popen(command, cwd=settings.REPO_DIR, preexec_fn=preexec)


def wait_for_health(
    url: str,
    process: subprocess.Popen[bytes] | None = None,
    timeout: float = DEFAULT_START_TIMEOUT_SECONDS,
) -> None:
    """Poll ``url``/health until it answers 200.

    Args:
        url: the FHE server's base URL.
        process: the child server process, if this program started it (its exit is an error).
        timeout: seconds before giving up.

    Raises:
        RuntimeError: if the process exits or /health does not answer 200 in time.
    """
    deadline = time.monotonic() + timeout
    last_problem = "no answer yet"
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(
                f"the FHE server exited with code {process.returncode} before it was ready"
            )
        try:
            response = httpx.get(f"{url}/health", timeout=2.0)
            if response.status_code == 200:
                return
            last_problem = f"/health answered HTTP {response.status_code}"
        except httpx.HTTPError as error:
            last_problem = f"{error.__class__.__name__}: {error}"
        if time.monotonic() >= deadline:
            raise RuntimeError(
                f"the FHE server at {url} did not become healthy within {timeout:g} s "
                f"({last_problem})"
            )
        time.sleep(HEALTH_POLL_INTERVAL_SECONDS)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Terminate a child process, killing it if it does not stop in time (idempotent)."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _raise_system_exit(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    """Start the FHE server (unless FHE_SERVER_URL is set), wait for it, serve the page."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # SIGTERM runs the cleanup too (finally blocks and atexit), like Ctrl-C.
    signal.signal(signal.SIGTERM, _raise_system_exit)
    child: subprocess.Popen[bytes] | None = None
    atexit.register(close_all_clients)
    try:
        try:
            url = os.environ.get("FHE_SERVER_URL", "").rstrip("/")
            if not url:
                port = int(os.environ.get("FHE_SERVER_PORT", str(DEFAULT_FHE_SERVER_PORT)))
                url = f"http://127.0.0.1:{port}"
                # The handlers' clients read the URL from settings.server_url().
                os.environ["FHE_SERVER_URL"] = url
                child = start_fhe_server(port)
                atexit.register(stop_process, child)
            timeout = float(
                os.environ.get("FHE_SERVER_START_TIMEOUT", str(DEFAULT_START_TIMEOUT_SECONDS))
            )
            threeparty_page.start_server(preexec=_die_with_parent, stop=stop_process)
            wait_for_health(url, child, timeout=timeout)
        except RuntimeError as error:  # a startup problem: say it, without a traceback
            logger.error("%s", error)
            raise SystemExit(1) from None
        logger.info("FHE server ready at %s", url)
        demo = build_demo()
        demo.queue(default_concurrency_limit=4)
        demo.launch(i18n=make_i18n())
    finally:
        close_all_clients()
        if child is not None:
            stop_process(child)


if __name__ == "__main__":
    main()
